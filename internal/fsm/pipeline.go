package fsm

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/ncruces/go-sqlite3"

	"github.com/godqlite/dqlite/internal/command"
	"github.com/godqlite/dqlite/internal/crashpoint"
	"github.com/godqlite/dqlite/internal/errs"
	"github.com/godqlite/dqlite/internal/vfs"
	"github.com/godqlite/dqlite/wal"
)

// The leader's pipeline (DESIGN.md, "Pipelined commits"). A local
// transaction is written to the WAL and published in the wal-index by its
// own connection, which then gives SQLite's write lock back at once: the
// next transaction builds on it while it replicates. Transactions wait in
// the queue, in WAL order, until the proposer sends them to Raft, all that
// are ready at once merged into one Frames entry, one entry in flight at a
// time. The FSM claims the entry when Raft applies it, and that commits
// them. Should the entry fail, every queued transaction is cut from the WAL
// and the wal-index, which go back to the last committed state.
//
// Until then, readers outside write transactions must not see them:
// Fence makes a reader that may have seen a queued transaction wait until
// it is resolved, and retry if it was cut.

// ptx is a local transaction in the pipeline.
type ptx struct {
	seq       uint64 // 1 + the seq of the one before it
	conn      uint64
	tx        *vfs.Tx
	hdr       wal.IndexHeader // the wal-index header after it
	confirmed bool            // SQLite published it
	returned  bool            // its statement returned (then it is confirmed or was rolled back)
	proposed  bool
	done      chan struct{} // closed once resolved: err is set
	err       error
	start     time.Time // when its commit frame reached the pipeline
	changes   command.TxChanges
}

// pipeStats counts the leader's Frames entries and the transactions in them.
type pipeStats struct{ entries, txs atomic.Int64 }

// batch is one Frames entry of the pipeline.
type batch struct {
	id        uint64
	term      uint64 // of the leadership it was built in
	txs       []*ptx
	committed bool // claimed by the FSM
	failed    bool
}

// sameCommit reports whether two wal-index headers describe the same
// commit. Not by the checksum: SQLite rewrites the commit frame's after
// the VFS saw it when the transaction overwrote frames in place.
func sameCommit(a, b wal.IndexHeader) bool {
	return a.Change == b.Change && a.MaxFrame == b.MaxFrame && a.DBSize == b.DBSize && a.Salt == b.Salt
}

// Commit implements vfs.Committer: the commit frame of connection conn's
// transaction is in the WAL and SQLite is about to publish it. It queues
// the transaction for Raft; an error makes SQLite roll it back instead.
func (d *DB) Commit(conn uint64, tx *vfs.Tx) error {
	d.mu.Lock()
	changes := d.staged[conn]
	delete(d.staged, conn)
	d.mu.Unlock()
	if changes == nil {
		// Pages written, no change the hooks saw (VACUUM, PRAGMA
		// user_version): subscribers must learn that something changed.
		changes = command.TxChanges{{Ops: command.OpPartial}}
	}
	if tx.Overflow {
		err := fmt.Errorf("%w: it wrote %d bytes of pages, the limit is %d", errs.ErrTxTooLarge, tx.Size, d.opts.MaxTxSize)
		d.setErr(conn, err)
		d.opts.Metrics.Failure(err)
		return err
	}
	if d.opts.CheckWrite != nil {
		if err := d.opts.CheckWrite(); err != nil {
			d.setErr(conn, err)
			d.opts.Metrics.Failure(err)
			return err
		}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	// A checkpoint of the committed state is running: it must not see this
	// one in the wal-index.
	for d.ckptRun && d.broken == nil && d.failed == nil && !d.opts.stopping.Load() {
		g := d.gate
		d.mu.Unlock()
		d.ckptBlocked.Add(1) // the checkpoint must not wait for this one's write lock
		<-g
		d.ckptBlocked.Add(-1)
		d.mu.Lock()
	}
	err := d.failed
	if err == nil {
		err = d.broken
	}
	if err == nil && d.opts.stopping.Load() {
		err = errs.ErrClosed
	}
	var prev wal.IndexHeader
	if err == nil {
		prev, err = wal.NewIndex(d.shm).Header()
	}
	if err != nil {
		d.errs[conn] = err
		d.opts.Metrics.Failure(err)
		return err
	}
	d.confirmLocked(prev, true)
	if n := len(d.queue); n > 0 && !sameCommit(d.queue[n-1].hdr, prev) {
		// Only this pipeline publishes while it is not empty.
		err := fmt.Errorf("%w: wal-index moved under queued transactions", errs.ErrDiverged)
		d.failLocked(err)
		d.errs[conn] = err
		d.opts.Metrics.Failure(err)
		return err
	}
	h := prev
	h.Init = true
	h.Change++
	h.PageSize = tx.PageSize
	h.MaxFrame = tx.Frame
	h.DBSize = tx.DBSize
	h.FrameChecksum = wal.Checksum{} // known once SQLite publishes it
	h.Salt = tx.Salt
	if prev.MaxFrame == 0 {
		h.BigEndian = tx.BigEndian
	}
	if len(d.queue) == 0 {
		d.base = prev
	}
	t := &ptx{seq: d.written.Load() + 1, conn: conn, tx: tx, hdr: h, done: make(chan struct{}), start: time.Now(), changes: changes}
	d.queue = append(d.queue, t)
	d.last[conn] = t
	d.written.Store(t.seq)
	d.kick() // it looks for SQLite's publication of it
	crashpoint.Hit("commit-written", d.Name)
	return nil
}

// confirmLocked decides the fate of the last queued transaction if SQLite
// has not been seen publishing it: cur is the wal-index header now, and
// next says that another transaction is being written on top of it. d.mu
// is held.
func (d *DB) confirmLocked(cur wal.IndexHeader, next bool) {
	n := len(d.queue)
	if n == 0 || d.queue[n-1].confirmed {
		return
	}
	t := d.queue[n-1]
	switch {
	case sameCommit(cur, t.hdr):
		t.confirmed = true
		t.hdr = cur // SQLite's own, with the final checksum
		d.kick()
	case next || t.returned:
		// SQLite failed after the commit frame and rolled it back: it was
		// never published, nothing was built on it.
		d.queue = d.queue[:n-1]
		d.resolveLocked(t, 0, sqlite3.IOERR_WRITE)
	}
}

// resolveLocked ends t's wait. d.mu is held; t is out of the queue.
func (d *DB) resolveLocked(t *ptx, index uint64, err error) {
	t.err = err
	close(t.done)
	d.opts.Metrics.Commit(t.start, err)
	if err == nil {
		d.commits[t.conn] = index
	}
	r := d.written.Load()
	if len(d.queue) > 0 {
		r = d.queue[0].seq - 1
	}
	if r != d.resolved.Load() {
		d.resolved.Store(r)
		close(d.resolvedCh)
		d.resolvedCh = make(chan struct{})
	}
}

// kick wakes the proposer.
func (d *DB) kick() {
	select {
	case d.wake <- struct{}{}:
	default:
	}
}

// Settle tells the database that a statement of connection conn returned:
// a transaction it committed is published by now, or was rolled back.
func (d *DB) Settle(conn uint64) {
	d.mu.Lock()
	// Changes staged by a commit that wrote no frame (so Commit never
	// took them) are not the next transaction's.
	delete(d.staged, conn)
	close(d.settled)
	d.settled = make(chan struct{})
	if t := d.last[conn]; t != nil && !t.confirmed && !t.returned {
		t.returned = true
		if cur, err := wal.NewIndex(d.shm).Header(); err == nil {
			d.confirmLocked(cur, false)
		}
	}
	d.mu.Unlock()
}

// Await waits until the transaction that connection conn's last statement
// committed locally is committed by Raft, or failed, and returns its error:
// nil, or the outcome-unknown or failed errors of package errs. cuts is
// what Cuts returned when the transaction began: one that wrote nothing
// may still have read queued transactions, and commits only once they did.
func (d *DB) Await(conn uint64, cuts uint64) error {
	d.Settle(conn)
	d.mu.Lock()
	t := d.last[conn]
	delete(d.last, conn)
	d.mu.Unlock()
	if t == nil {
		cut, err := d.Fence(context.Background(), cuts)
		if err == nil && cut {
			err = fmt.Errorf("%w: the transaction read writes that then failed", errs.ErrLeadershipLost)
		}
		return err
	}
	<-t.done
	return t.err
}

// Fence makes a read outside a write transaction safe: cuts is what Cuts
// returned before the read's snapshot was taken. It waits until every
// transaction that snapshot may hold is resolved, and reports whether one
// of them may have been cut (then the read must start again).
func (d *DB) Fence(ctx context.Context, cuts uint64) (retry bool, err error) {
	w := d.written.Load()
	for d.resolved.Load() < w {
		d.mu.Lock()
		ch := d.resolvedCh
		d.mu.Unlock()
		if d.resolved.Load() >= w {
			break
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return false, ctx.Err()
		case <-d.stop:
			return false, errs.ErrClosed
		}
	}
	return d.cuts.Load() != cuts, nil
}

// Cuts counts the times queued transactions were cut (see Fence).
func (d *DB) Cuts() uint64 { return d.cuts.Load() }

// Admit waits while the leader drains its pipeline for a checkpoint, so
// that a new write transaction does not hold the write lock the
// checkpoint needs. It gives up after a second: the checkpoint then makes
// less progress, nothing worse.
func (d *DB) Admit() {
	d.mu.Lock()
	want, g := d.ckptWant, d.gate
	d.mu.Unlock()
	if !want {
		return
	}
	t := time.NewTimer(time.Second)
	defer t.Stop()
	select {
	case <-g:
	case <-t.C:
	case <-d.stop:
	}
}

// maxBatch is the most transactions one Frames entry carries.
const maxBatch = 1024

// propose is the proposer goroutine of the database.
func (d *DB) propose() {
	defer close(d.proposerDone)
	poll := time.NewTimer(time.Hour)
	defer poll.Stop()
	for {
		if h := d.opts.hooks.Load(); h != nil && h.beforeBatch != nil {
			hook := h.beforeBatch
			d.mu.Lock()
			ready := d.inflight == nil && len(d.queue) > 0
			d.mu.Unlock()
			if ready {
				hook(d.Queued)
			}
		}
		var term uint64
		if d.opts.Term != nil {
			term = d.opts.Term()
		}
		d.mu.Lock()
		if d.failed != nil && len(d.queue) > 0 && d.inflight == nil {
			// This copy is no longer served: nothing queued will be
			// proposed. Their commits fail (nothing of them reached Raft).
			d.cuts.Add(1)
			d.failQueueLocked(d.failed, d.failed)
		}
		b := d.takeBatchLocked(term)
		waitHead := b == nil && len(d.queue) > 0 && !d.queue[0].confirmed
		drained := b == nil && len(d.queue) == 0 && d.ckptWant
		d.mu.Unlock()
		if drained {
			d.leaderCheckpoint()
			continue
		}
		if b == nil {
			if waitHead {
				// SQLite is publishing it: look again soon, if its
				// statement does not return first.
				poll.Reset(time.Millisecond)
			}
			select {
			case <-d.wake:
			case <-poll.C:
			case <-d.stop:
				return
			}
			if waitHead {
				d.mu.Lock()
				if cur, err := wal.NewIndex(d.shm).Header(); err == nil {
					d.confirmLocked(cur, false)
				}
				d.mu.Unlock()
			}
			continue
		}
		d.sendBatch(b)
	}
}

// takeBatchLocked takes the confirmed transactions at the head of the
// queue as the next batch of the leadership of term, if none is in
// flight. d.mu is held.
func (d *DB) takeBatchLocked(term uint64) *batch {
	if d.inflight != nil || d.broken != nil || d.failed != nil || len(d.queue) == 0 {
		return nil
	}
	var b *batch
	var size int64
	for _, t := range d.queue {
		if !t.confirmed || t.proposed {
			break
		}
		if b != nil && (len(b.txs) >= maxBatch || (d.opts.MaxTxSize > 0 && size+t.tx.Size > d.opts.MaxTxSize)) {
			break
		}
		if b == nil {
			d.nextTx++
			b = &batch{id: d.nextTx, term: term}
		}
		t.proposed = true
		b.txs = append(b.txs, t)
		size += t.tx.Size
	}
	d.inflight = b
	return b
}

// merge returns the Frames entry of a batch: each page's last image, the
// database size after the last transaction.
func (d *DB) merge(b *batch) *command.Frames {
	last := b.txs[len(b.txs)-1].tx
	f := &command.Frames{Database: d.Name, Origin: d.opts.NodeID, TxID: b.id, Term: b.term, PageSize: last.PageSize, DBSize: last.DBSize}
	for _, t := range b.txs {
		f.Changes = append(f.Changes, t.changes)
	}
	if len(b.txs) == 1 {
		f.Pages = last.Pages
		return f
	}
	at := map[uint32]int{}
	for _, t := range b.txs {
		for _, p := range t.tx.Pages {
			if i, ok := at[p.No]; ok {
				f.Pages[i] = p
				continue
			}
			at[p.No] = len(f.Pages)
			f.Pages = append(f.Pages, p)
		}
	}
	// Pages past the final size are not part of the database any more.
	pages := f.Pages[:0]
	for _, p := range f.Pages {
		if p.No <= f.DBSize {
			pages = append(pages, p)
		}
	}
	f.Pages = pages
	return f
}

// sendBatch replicates one batch and settles it.
func (d *DB) sendBatch(b *batch) {
	var err error
	if b.term == 0 && d.opts.Term != nil {
		err = d.refusal(errs.ErrNotLeader) // not the ready leader: nothing can be proposed
	} else {
		err = d.opts.Propose(command.EncodeFrames(d.merge(b)))
	}
	d.mu.Lock()
	if b.committed {
		d.mu.Unlock()
		d.maybeDrain()
		return
	}
	if err == nil {
		// Raft reported success without the FSM claiming our entry: it
		// was applied through another path (after a cut). Never report
		// what the FSM did not mark.
		err = fmt.Errorf("%w: entry applied without its transactions being claimed", errs.ErrLeadershipLost)
	}
	b.failed = true
	if d.inflight == b {
		d.inflight = nil
	}
	if d.broken == nil {
		d.broken = err
	}
	d.mu.Unlock()
	if d.opts.Unready != nil {
		d.opts.Unready() // open write transactions built on the queue roll back
	}
	d.cut(err)
}

// maybeDrain asks for a checkpoint once the WAL is long: new write
// transactions wait (Admit) and the proposer sends what is queued; once
// the queue is empty it checkpoints.
func (d *DB) maybeDrain() {
	if d.opts.CheckpointFrames == 0 {
		return
	}
	hdr, err := wal.NewIndex(d.shm).Header()
	if err != nil || hdr.MaxFrame < d.opts.CheckpointFrames {
		return
	}
	d.mu.Lock()
	if !d.ckptWant {
		d.ckptWant = true
		d.drainStart = time.Now()
	}
	d.mu.Unlock()
}

// leaderCheckpoint checkpoints the drained WAL. Local commits wait
// meanwhile (Commit): the checkpoint copies committed frames only.
func (d *DB) leaderCheckpoint() {
	d.applyMu.Lock()
	d.maybeCheckpoint()
	d.applyMu.Unlock()
	d.mu.Lock()
	d.endDrainLocked() // also when it did not run
	d.mu.Unlock()
}

// endDrainLocked ends a drain for a checkpoint: new write transactions
// go on. d.mu is held.
func (d *DB) endDrainLocked() {
	if d.ckptWant {
		d.ckptWant = false
		close(d.gate)
		d.gate = make(chan struct{})
	}
}

// holdCommits starts a checkpoint of the committed state: it reports
// false if local transactions are queued (the WAL holds frames Raft has
// not committed), else local commits wait at their commit frame until
// releaseCommits. Only the holder of ckptMu calls it.
func (d *DB) holdCommits() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.queue) > 0 || d.unrewound {
		return false
	}
	d.ckptRun = true
	return true
}

// releaseCommits ends holdCommits.
func (d *DB) releaseCommits() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.ckptRun {
		d.ckptRun = false
		close(d.gate)
		d.gate = make(chan struct{})
	}
}

// claim is called by the FSM for every Frames entry. It reports whether the
// entry is the batch in flight, which it commits.
func (d *DB) claim(f *command.Frames, index uint64) bool {
	d.mu.Lock()
	b := d.inflight
	if f.Origin != d.opts.NodeID || b == nil || b.id != f.TxID || b.failed || b.committed {
		d.mu.Unlock()
		return false
	}
	if h := d.opts.hooks.Load(); h != nil && h.afterCommit != nil {
		h.afterCommit() // before the commits return: a test may replace it then
	}
	b.committed = true
	d.inflight = nil
	d.opts.claimed.entries.Add(1)
	d.opts.claimed.txs.Add(int64(len(b.txs)))
	last := b.txs[len(b.txs)-1]
	d.queue = d.queue[len(b.txs):]
	d.base = last.hdr
	d.applied.Store(index)
	d.markDirty(f.Pages)
	// The node's applied index first: it is the read index the leader
	// hands out, which must not be below a commit already acknowledged.
	if d.opts.done != nil {
		d.opts.done.set(index)
	}
	for _, t := range b.txs {
		d.resolveLocked(t, index, nil)
	}
	if d.ckptWant && time.Since(d.drainStart) > time.Second {
		d.endDrainLocked() // writers keep coming: give up this time
	}
	d.mu.Unlock()
	d.kick()
	// The applied log records it after its frames, as it does a
	// follower's (a restart cuts what no record names, and Raft applies
	// it again); the checkpoint that could copy it waits for this Apply.
	if err := d.record(last.tx.Frame, last.tx.Salt, index); err != nil {
		d.fail(fmt.Errorf("applied log: %w", err))
		return true
	}
	crashpoint.Hit("commit-recorded", d.Name, index)
	return true
}

// Queued returns how many local transactions wait in the pipeline,
// published by SQLite (so ready to be proposed, or proposed).
func (d *DB) Queued() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	n := 0
	for _, t := range d.queue {
		if t.confirmed {
			n++
		}
	}
	return n
}

// pending reports whether local transactions wait in the pipeline.
func (d *DB) pending() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.queue) > 0
}

// cut removes every queued transaction from the WAL and the wal-index,
// which go back to the last committed state, and fails their commits with
// cause (those that never reached Raft with the error a new write gets
// now: they did not commit). It waits for SQLite's write lock: open write
// transactions are being rolled back (Options.Unready).
func (d *DB) cut(cause error) {
	d.applyMu.Lock()
	defer d.applyMu.Unlock()
	d.cutLocked(cause, false)
}

// cutLocked is cut with d.applyMu held; closing skips the stop check of
// the write lock (the node's connections are closed).
func (d *DB) cutLocked(cause error, closing bool) {
	d.mu.Lock()
	need := len(d.queue) > 0 || d.unrewound
	if !need {
		d.broken = nil
	}
	d.mu.Unlock()
	if !need {
		return
	}
	var locked bool
	if closing {
		locked = d.apply.Exec(`BEGIN IMMEDIATE`) == nil
	} else {
		locked = d.lockWrite() == nil
	}
	if locked {
		defer d.apply.Exec(`ROLLBACK`)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	switch {
	case len(d.queue) == 0 && !d.unrewound:
	case locked:
		err := wal.NewIndex(d.shm).Publish(d.base)
		if err == nil {
			err = d.walf.Truncate(wal.FrameOffset(d.base.MaxFrame+1, int(d.pageSize)))
		}
		if err != nil {
			d.failLocked(fmt.Errorf("cut queued transactions: %w", err))
		}
		vfs.Committed(d.path, d.base.MaxFrame, int(d.pageSize), d.base.Salt, d.base.BigEndian)
		d.unrewound = false
		d.cuts.Add(1)
	default:
		// Stopping, with the write lock out of reach: Close cuts them
		// once the connections are closed (and no connection checkpoints
		// on close, NO_CKPT_ON_CLOSE; a crash leaves frames that no record
		// names, which the next start cuts). Nothing may read them
		// meanwhile.
		if len(d.queue) > 0 {
			d.unrewound = true
			d.cuts.Add(1)
		}
		if d.failed == nil {
			d.failed = fmt.Errorf("%w: %s is closing", errs.ErrClosed, d.Name)
		}
	}
	d.failQueueLocked(cause, d.refusal(cause))
	d.broken = nil
	d.endDrainLocked()
}

// refusal returns the error a new write gets now, or fallback if it would
// get none: what a transaction that was never proposed failed with.
func (d *DB) refusal(fallback error) error {
	if d.opts.CheckWrite != nil {
		if err := d.opts.CheckWrite(); err != nil {
			return err
		}
	}
	return fallback
}

// failQueueLocked ends every queued transaction's wait: the proposed ones
// with cause, the others with never. d.mu is held.
func (d *DB) failQueueLocked(cause, never error) {
	q := d.queue
	d.queue = nil
	d.inflight = nil
	for _, t := range q {
		err := cause
		if !t.proposed {
			err = never
		}
		d.resolveLocked(t, 0, err)
	}
}

// stopProposer stops the proposer goroutine and waits for it.
func (d *DB) stopProposer() {
	select {
	case <-d.stop:
	default:
		close(d.stop)
	}
	if d.proposing {
		<-d.proposerDone
	}
}

// failLocked is fail with d.mu held.
func (d *DB) failLocked(err error) {
	if d.failed == nil {
		d.failed = fmt.Errorf("%w: %s: %v", errs.ErrDiverged, d.Name, err)
		d.opts.Logger.Error("database stopped", "database", d.Name, "err", err)
	}
}

// committedHeader returns the wal-index header of the last committed
// state: what a snapshot may hold.
func (d *DB) committedHeader() (wal.IndexHeader, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.queue) > 0 {
		return d.base, nil
	}
	return wal.NewIndex(d.shm).Header()
}
