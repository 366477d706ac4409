package fsm

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ncruces/go-sqlite3"

	"github.com/godqlite/dqlite/internal/command"
	"github.com/godqlite/dqlite/internal/errs"
	"github.com/godqlite/dqlite/internal/faults"
	"github.com/godqlite/dqlite/internal/metrics"
	"github.com/godqlite/dqlite/internal/vfs"
	"github.com/godqlite/dqlite/wal"
)

// Proposer appends a command to the Raft log and waits until the local FSM
// applied it, or until it failed. It returns the errors of package errs.
type Proposer func(cmd []byte) error

// Options are the settings every database of a node shares.
type Options struct {
	NodeID           uint64
	MaxTxSize        int64  // bytes of page images one transaction may write
	CheckpointFrames uint32 // checkpoint once the WAL holds this many frames
	Logger           *slog.Logger
	Propose          Proposer
	// CheckWrite, if set, returns why this node may not commit now (not
	// the ready leader), or nil.
	CheckWrite func() error
	// Term, if set, returns the Raft term of this node's ready leadership,
	// or 0: the pipeline's entries carry it.
	Term func() uint64
	// Unready, if set, is called when a batch of the pipeline failed: the
	// node must roll back its open write transactions (they were built on
	// the failed batch) and wait for a barrier before it writes again.
	Unready func()
	// DiskError, if set, is told when a write of this node's disk failed
	// and is being retried: the node should stop leading.
	DiskError func(err error)
	// SnapshotIndex, if set, returns the Raft index of the snapshot that
	// Restore is installing (the store's latest).
	SnapshotIndex func() uint64
	// Metrics, if set, records commits, snapshots and checkpoints.
	Metrics *metrics.Set

	hooks    *atomic.Pointer[testHooks] // see FSM.SetAfterCommit and SetBeforeBatch
	done     *doneIndex                 // the FSM's applied index
	claimed  *pipeStats                 // see Stats
	stopping *atomic.Bool               // set by FSM.Stop
}

// DB is one replicated database on one node.
type DB struct {
	Name string
	path string // canonical path of the database file
	opts *Options

	mu      sync.Mutex
	errs    map[uint64]error             // the real cause of a failed commit, per connection
	commits map[uint64]uint64            // the Raft index of the last commit, per connection
	staged  map[uint64]command.TxChanges // what a connection's committing transaction changed (StageChanges)
	settled chan struct{}                // closed, and replaced, whenever a statement returns
	nextTx  uint64
	failed  error // set when this node's copy diverged

	// The pipeline (pipeline.go), under mu.
	queue       []*ptx          // local transactions not yet committed or cut, in WAL order
	inflight    *batch          // the batch Raft is replicating
	base        wal.IndexHeader // the committed state's wal-index header, while queue is not empty
	last        map[uint64]*ptx // each connection's last queued transaction, until awaited
	broken      error           // a batch failed: commits are refused until the cut
	unrewound   bool            // cut without the write lock (stopping): Close rewinds
	ckptWant    bool            // draining for a checkpoint: new write transactions wait
	ckptRun     bool            // the checkpoint runs: local commits wait
	ckptBlocked atomic.Int32    // local commits waiting for it
	drainStart  time.Time
	gate        chan struct{} // closed and replaced when a drain ends
	resolvedCh  chan struct{} // closed and replaced when resolved moves
	// written is the seq of the last queued transaction; resolved the
	// seq up to which all are committed or cut; cuts counts the cuts.
	written, resolved, cuts atomic.Uint64
	wake                    chan struct{} // the proposer's
	stop                    chan struct{} // closed by close
	proposerDone            chan struct{}
	proposing               bool // the proposer goroutine runs

	// The follower path. applyMu serialises use of apply, the connection
	// that holds the write lock while frames are appended, and of the
	// checkpoints run through it.
	applyMu  sync.Mutex
	apply    *sqlite3.Conn
	shm      *shm
	walf     *os.File
	pageSize uint32
	ckptMu   sync.RWMutex // snapshot persistence holds it shared: no checkpoint may run

	// applied is the Raft index of the last Frames entry these files hold;
	// rec is the applied log that makes it durable (see applied.go).
	applied   atomic.Uint64
	recMu     sync.Mutex
	rec       *appliedLog
	compactAt int64 // size at which to try compacting again after a failure

	// dirty holds the pages changed since the latest snapshot: the next
	// one stores only those (see Snapshot).
	dirtyMu sync.Mutex
	dirty   bitmap
}

// URI returns the SQLite URI that opens the database through the dqlite
// VFS as connection conn.
func (d *DB) URI(conn uint64) string {
	u := url.URL{Scheme: "file", Path: d.path}
	q := url.Values{}
	q.Set("vfs", vfs.Name)
	q.Set(vfs.ConnParam, strconv.FormatUint(conn, 10))
	u.RawQuery = q.Encode()
	return u.String()
}

// Path returns the database file's path.
func (d *DB) Path() string { return d.path }

// PageSize returns the database's page size.
func (d *DB) PageSize() uint32 { return d.pageSize }

// openDB creates (if needed) and opens the database name in dir, the same
// way on every node, and registers it with the VFS. last is the record
// of the state its files hold (recoverDB), or nil for a new database.
func openDB(dir, name string, pageSize uint32, opts *Options, last *record) (_ *DB, err error) {
	d := &DB{Name: name, opts: opts, errs: map[uint64]error{}, commits: map[uint64]uint64{}, staged: map[uint64]command.TxChanges{}, pageSize: pageSize, settled: make(chan struct{}),
		nextTx: uint64(time.Now().UnixNano()), last: map[uint64]*ptx{}, gate: make(chan struct{}), resolvedCh: make(chan struct{}),
		wake: make(chan struct{}, 1), stop: make(chan struct{}), proposerDone: make(chan struct{})}
	d.path, err = vfs.Register(filepath.Join(dir, name), d, opts.MaxTxSize)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			d.close()
		}
	}()
	// The applied log first: a database file never exists without one.
	recs := []record{{kind: recHeader, pageSize: pageSize}}
	if last != nil && last.kind == recCommit {
		recs = append(recs, *last)
		d.applied.Store(last.index)
	}
	if d.rec, err = writeAppliedLog(appliedPath(dir, name), recs, nil); err != nil {
		return nil, fmt.Errorf("open %s: %w", name, err)
	}
	d.apply, err = sqlite3.Open(d.URI(0))
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", name, err)
	}
	// The last connection to close would checkpoint: never while the
	// leader's pipeline holds frames Raft did not commit.
	if _, err := d.apply.Config(sqlite3.DBCONFIG_NO_CKPT_ON_CLOSE, true); err != nil {
		return nil, fmt.Errorf("open %s: %w", name, err)
	}
	// Page size first: it only takes effect on an empty database.
	err = d.apply.Exec(fmt.Sprintf(`PRAGMA page_size=%d; PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0; PRAGMA synchronous=NORMAL`, pageSize))
	if err != nil {
		return nil, fmt.Errorf("create %s: %w", name, err)
	}
	var got uint32
	if err := queryInt(d.apply, `PRAGMA page_size`, &got); err != nil {
		return nil, err
	}
	if got != pageSize {
		return nil, fmt.Errorf("%w: %s has page size %d, the cluster created it with %d", errs.ErrDiverged, name, got, pageSize)
	}
	// A read opens the WAL and the wal-index, which this connection then
	// keeps open (and locked against truncation) until it closes.
	var n int64
	if err := queryInt(d.apply, `SELECT count(*) FROM sqlite_schema`, &n); err != nil {
		return nil, err
	}
	if d.shm, err = openShm(d.path + "-shm"); err != nil {
		return nil, err
	}
	if d.walf, err = os.OpenFile(d.path+"-wal", os.O_RDWR|os.O_CREATE, 0o644); err != nil {
		return nil, fmt.Errorf("open wal: %w", err)
	}
	// Creating the database wrote its first page outside any transaction
	// of the log: the next snapshot stores it (again, if it did already).
	d.dirty.add(1)
	if err := d.apply.BusyTimeout(time.Second); err != nil {
		return nil, err
	}
	d.proposing = true
	go d.propose()
	return d, nil
}

func queryInt[T ~uint32 | ~int64](c *sqlite3.Conn, query string, v *T) error {
	s, _, err := c.Prepare(query)
	if err != nil {
		return err
	}
	defer s.Close()
	if !s.Step() {
		if err := s.Err(); err != nil {
			return err
		}
		return fmt.Errorf("%s returned no row", query)
	}
	*v = T(s.ColumnInt64(0))
	return s.Close()
}

func (d *DB) close() error {
	d.stopProposer()
	vfs.Unregister(d.path)
	var errList []error
	if d.rec != nil {
		errList = append(errList, d.rec.close())
	}
	if d.shm != nil {
		errList = append(errList, d.shm.Close())
	}
	if d.walf != nil {
		errList = append(errList, d.walf.Close())
	}
	if d.apply != nil {
		errList = append(errList, d.apply.Close())
	}
	return errors.Join(errList...)
}

// record appends a commit record to the applied log.
func (d *DB) record(frame uint32, salt [2]uint32, index uint64) error {
	d.recMu.Lock()
	defer d.recMu.Unlock()
	r := record{kind: recCommit, frame: frame, salt: salt, index: index}
	for attempt := 0; ; attempt++ {
		err := d.rec.append(r)
		if err == nil || !d.retryDisk(err, attempt, "applied log") {
			if err == nil && d.rec.size >= max(maxAppliedLog, d.compactAt) {
				d.compact(r)
			}
			return err
		}
	}
}

// maxAppliedLog is the size at which an applied log is rewritten.
const maxAppliedLog = 64 << 10

// compact replaces the applied log by its header and last record, which
// is all a start needs (see recoverDB): the records before it name
// transactions that came before it in the WAL or were checkpointed. A
// failure leaves the long log in place. recMu is held.
func (d *DB) compact(last record) {
	l, err := writeAppliedLog(d.rec.f.Name(), []record{{kind: recHeader, pageSize: d.pageSize}, last}, d.rec)
	if l == nil {
		// Neither log is open: a later record could go nowhere.
		d.rec = &appliedLog{f: d.rec.f} // closed: appends fail
		d.fail(fmt.Errorf("applied log: %w", err))
		return
	}
	d.rec = l
	if err != nil {
		d.compactAt = l.size + maxAppliedLog // not at every record
		d.opts.Logger.Warn("cannot rewrite the applied log; keeping the long one", "database", d.Name, "err", err)
	}
}

// DiskError implements vfs.Committer: the node should stop leading.
func (d *DB) DiskError(err error) {
	if d.opts.DiskError != nil {
		d.opts.DiskError(err)
	}
}

// retryDisk waits before another attempt at a write the disk refused, and
// reports whether to make it.
func (d *DB) retryDisk(err error, attempt int, what string) bool {
	if d.opts.stopping.Load() || !faults.IsDisk(err) {
		return false
	}
	if attempt%50 == 0 {
		d.opts.Logger.Error("disk refused a write; retrying until it takes it",
			"database", d.Name, "write", what, "attempt", attempt, "err", err)
	}
	d.DiskError(err) // on every attempt: the node hears for as long as it lasts
	time.Sleep(min(time.Duration(attempt+1)*10*time.Millisecond, 200*time.Millisecond))
	return !d.opts.stopping.Load()
}

// StageChanges records what the transaction that connection conn is
// committing changed; Commit puts it into the transaction's log entry.
func (d *DB) StageChanges(conn uint64, ch command.TxChanges) {
	d.mu.Lock()
	d.staged[conn] = ch
	d.mu.Unlock()
}

func (d *DB) setErr(conn uint64, err error) {
	d.mu.Lock()
	d.errs[conn] = err
	d.mu.Unlock()
}

// TakeError returns and forgets the real cause of the last failed commit of
// connection conn, or nil.
func (d *DB) TakeError(conn uint64) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	err := d.errs[conn]
	delete(d.errs, conn)
	return err
}

// Settled returns a channel closed when the next statement returns on any
// connection: a writer waiting for the write lock waits for it rather
// than polling.
func (d *DB) Settled() <-chan struct{} {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.settled
}

// Failed returns the reason this node's copy stopped being served, or nil.
func (d *DB) Failed() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.failed
}

func (d *DB) fail(err error) {
	d.mu.Lock()
	if d.failed == nil {
		d.failed = fmt.Errorf("%w: %s: %v", errs.ErrDiverged, d.Name, err)
		d.opts.Logger.Error("database stopped", "database", d.Name, "err", err)
	}
	d.mu.Unlock()
}

// randomSalt returns a fresh WAL salt.
func randomSalt() uint32 { return rand.Uint32() }

// CheckpointNow copies the whole WAL into the database file and truncates
// it, waiting up to timeout for readers and writers to get out of the way
// (on the leader, for its queued transactions to commit: it copies only
// what Raft committed).
func (d *DB) CheckpointNow(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	// The snapshot's lock first: waiting for a snapshot being persisted
	// must not hold up applies.
	d.ckptMu.Lock()
	defer d.ckptMu.Unlock()
	for {
		d.applyMu.Lock()
		if d.holdCommits() {
			break
		}
		d.applyMu.Unlock()
		// Wait for the queue to move (or the deadline).
		d.mu.Lock()
		moved := d.resolvedCh
		d.mu.Unlock()
		select {
		case <-moved:
		case <-time.After(time.Until(deadline)):
			return fmt.Errorf("%w: local transactions are being replicated", errs.ErrBusy)
		case <-d.stop:
			return errs.ErrClosed
		}
	}
	defer d.applyMu.Unlock()
	defer d.releaseCommits()
	// Wait for the write lock, but not for a writer that waits for this
	// checkpoint (at its commit frame): give up the truncation instead.
	err := d.apply.BusyHandler(func(ctx context.Context, count int) bool {
		if d.ckptBlocked.Load() > 0 || time.Now().After(deadline) {
			return false
		}
		time.Sleep(time.Millisecond)
		return true
	})
	if err != nil {
		return err
	}
	defer d.apply.BusyTimeout(time.Second)
	_, _, err = d.apply.WALCheckpoint("main", sqlite3.CHECKPOINT_TRUNCATE)
	return err
}

// AppliedIndex is the Raft index of the last Frames entry the database's
// files hold.
func (d *DB) AppliedIndex() uint64 { return d.applied.Load() }

// WALState returns the wal-index header and the number of frames
// checkpointed into the database file: the state readers see.
func (d *DB) WALState() (wal.IndexHeader, uint32, error) {
	x := wal.NewIndex(d.shm)
	h, err := x.Header()
	if err != nil {
		return h, 0, err
	}
	b, err := x.Backfilled()
	return h, b, err
}
