// Package fsm is dqlite's raft.FSM: it owns the databases of one node and
// applies the Raft log to them.
//
// Which goroutine calls what (the rules of hashicorp/raft):
//
//   - Apply, Snapshot and Restore run on raft's FSM goroutine, one at a
//     time. Apply must be deterministic: the same entry gives the same
//     files on every node.
//   - Persist (of the snapshot Snapshot returned) runs on another goroutine,
//     concurrently with Apply.
//
// A Frames entry either belongs to the local transaction that the VFS is
// holding at its commit frame (then Apply only marks it committed: that
// connection holds the write lock and publishes it), or it goes through
// the follower path, which appends the frames to the WAL and maintains the
// wal-index itself under the write lock. Apply never waits for the
// application: the only holders of the write lock it can meet end on their
// own (see DESIGN.md).
package fsm

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
	"github.com/ncruces/go-sqlite3"

	"github.com/godqlite/dqlite/internal/command"
	"github.com/godqlite/dqlite/internal/crashpoint"
	"github.com/godqlite/dqlite/internal/errs"
	"github.com/godqlite/dqlite/internal/metrics"
	"github.com/godqlite/dqlite/wal"
)

// FSM implements raft.FSM over the databases in one directory.
type FSM struct {
	dir  string
	opts Options

	mu       sync.Mutex
	dbs      map[string]*DB
	openErrs map[string]error // databases this node could not open, and why
	changed  chan struct{}    // closed when a database is created
	closed   bool

	untrusted string // why the files found at start cannot be used, or ""
	stats     struct{ skipped, appended, restored atomic.Int64 }
	sizes     logSizes
	// lastSeen is the index of the last entry Apply saw (or of the
	// snapshot Restore installed); heldAtStart the highest index the files
	// held at start. Until Raft's replay passes it, the sets of changed
	// pages are incomplete and Snapshot refuses.
	lastSeen, heldAtStart atomic.Uint64
	done                  doneIndex     // see AppliedIndex
	stopped               chan struct{} // closed by Stop
}

// CatchingUp reports whether Raft has yet to replay entries that the
// files held at start.
func (f *FSM) CatchingUp() bool { return f.lastSeen.Load() < f.heldAtStart.Load() }

// Replayed tells the FSM that every log entry up to index after the latest
// snapshot went through Apply (recovery replays the log itself), so that
// Snapshot may run even when there were none; it does nothing while the
// files hold entries after index.
func (f *FSM) Replayed(index uint64) {
	if index >= f.heldAtStart.Load() && index > f.lastSeen.Load() {
		f.lastSeen.Store(index)
	}
}

// Stats counts what the FSM did since it started.
type Stats struct {
	Skipped  int64 // Frames entries its files held already at start
	Appended int64 // Frames entries written through the follower path
	Restored int64 // databases written from a snapshot
	Claimed  int64 // Frames entries of this node's pipeline, as the leader
	Txs      int64 // local transactions those entries carried
}

// Stats returns what the FSM did since it started.
func (f *FSM) Stats() Stats {
	return Stats{Skipped: f.stats.skipped.Load(), Appended: f.stats.appended.Load(), Restored: f.stats.restored.Load(),
		Claimed: f.opts.claimed.entries.Load(), Txs: f.opts.claimed.txs.Load()}
}

var _ raft.FSM = (*FSM)(nil)

// New returns the FSM of the databases in dir. It finds, from each
// database's applied log and WAL, the Raft index its files hold (see
// recoverDB) and opens it there: Raft then applies only later entries.
// Files it cannot trust are left alone, and Untrusted says why: the node
// then removes them with Reset and rebuilds them from the snapshot and the
// log.
func New(dir string, opts Options) (*FSM, error) {
	opts.stopping = new(atomic.Bool)
	opts.claimed = new(pipeStats)
	opts.hooks = new(atomic.Pointer[testHooks])
	f := &FSM{dir: dir, opts: opts, dbs: map[string]*DB{}, openErrs: map[string]error{},
		changed: make(chan struct{}), stopped: make(chan struct{})}
	f.opts.done = &f.done
	dbs, why, err := recoverAll(dir)
	if err != nil {
		return nil, err
	}
	f.untrusted = why
	for name, r := range dbs {
		if f.untrusted != "" {
			break
		}
		d, err := openDB(dir, name, r.pageSize, &f.opts, &r.last)
		if err != nil {
			f.untrusted = fmt.Sprintf("database %s: %v", name, err)
			break
		}
		f.dbs[name] = d
		f.heldAtStart.Store(max(f.heldAtStart.Load(), r.index))
	}
	if f.untrusted != "" {
		for _, d := range f.dbs {
			d.close()
		}
		f.dbs = map[string]*DB{}
		f.heldAtStart.Store(0)
	}
	return f, nil
}

// Untrusted returns why the files New found cannot be used as they are,
// or "".
func (f *FSM) Untrusted() string { return f.untrusted }

// Applied returns the Raft index that each database's files hold.
func (f *FSM) Applied() map[string]uint64 {
	m := map[string]uint64{}
	for _, d := range f.Databases() {
		m[d.Name] = d.applied.Load()
	}
	return m
}

// Reset closes and removes every database and its applied log, before
// Raft starts: the node rebuilds them from the snapshot and the log.
func (f *FSM) Reset() error {
	f.mu.Lock()
	for _, d := range f.dbs {
		d.close()
	}
	f.dbs = map[string]*DB{}
	f.mu.Unlock()
	f.heldAtStart.Store(0)
	return removeAll(f.dir)
}

// DatabaseFiles lists the files in dir that hold database content: SQLite
// database files and non-empty WALs.
func DatabaseFiles(dir string) []string {
	_, content, _ := scanDatabases(dir)
	return content
}

// OpenError returns why this node could not open database name, or nil.
func (f *FSM) OpenError(name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.openErrs[name]
}

func removeDatabases(dir string) error {
	files, _, err := scanDatabases(dir)
	if err != nil {
		return err
	}
	for _, name := range files {
		if err := os.Remove(filepath.Join(dir, name)); err != nil {
			return err
		}
	}
	return nil
}

// scanDatabases lists the files of databases in dir: all of them (SQLite
// files and every -wal, -shm and -journal), and those that hold content
// (SQLite files and non-empty WALs).
func scanDatabases(dir string) (files, content []string, err error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, nil, err
	}
	for _, e := range entries {
		name := e.Name()
		if e.IsDir() || slices.Contains(reservedNames, name) {
			continue
		}
		p := filepath.Join(dir, name)
		switch {
		case strings.HasSuffix(name, "-wal"):
			files = append(files, name)
			if st, err := e.Info(); err == nil && st.Size() > 0 {
				content = append(content, name)
			}
		case strings.HasSuffix(name, "-shm"), strings.HasSuffix(name, "-journal"):
			files = append(files, name)
		case isSQLite(p):
			files = append(files, name)
			content = append(content, name)
		}
	}
	return files, content, nil
}

func isSQLite(path string) bool {
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	var b [16]byte
	n, _ := io.ReadFull(f, b[:])
	return n == 16 && string(b[:]) == "SQLite format 3\x00"
}

// SetAfterCommit installs a test hook that runs when the FSM claims a
// batch of local transactions, before their commits return (with the
// database's lock held: it must not call the database).
// Call it before the first database opens.
func (f *FSM) SetAfterCommit(hook func()) {
	h := f.hooks()
	h.afterCommit = hook
	f.opts.hooks.Store(&h)
}

// testHooks are the hooks tests install; the proposer may read them while
// they are set.
type testHooks struct {
	afterCommit func()
	beforeBatch func(queued func() int)
}

func (f *FSM) hooks() testHooks {
	if h := f.opts.hooks.Load(); h != nil {
		return *h
	}
	return testHooks{}
}

// SetBeforeBatch installs a test hook that runs in the proposer before it
// takes a batch, when transactions are queued and none is in flight;
// queued tells how many are. Call it before the first database opens.
func (f *FSM) SetBeforeBatch(hook func(queued func() int)) {
	h := f.hooks()
	h.beforeBatch = hook
	f.opts.hooks.Store(&h)
}

// Database returns the database called name, or nil.
func (f *FSM) Database(name string) *DB {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.dbs[name]
}

// Databases returns the databases, sorted by name.
func (f *FSM) Databases() []*DB {
	f.mu.Lock()
	defer f.mu.Unlock()
	dbs := make([]*DB, 0, len(f.dbs))
	for _, d := range f.dbs {
		dbs = append(dbs, d)
	}
	slices.SortFunc(dbs, func(a, b *DB) int { return strings.Compare(a.Name, b.Name) })
	return dbs
}

// Wait returns the database called name once it exists.
func (f *FSM) Wait(ctx context.Context, name string) (*DB, error) {
	for {
		f.mu.Lock()
		d, ch, closed := f.dbs[name], f.changed, f.closed
		f.mu.Unlock()
		if closed {
			return nil, errs.ErrClosed
		}
		if d != nil {
			return d, nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// Stop makes an apply that waits for the write lock give up: call it
// before shutting Raft down, which waits for the apply in progress.
func (f *FSM) Stop() {
	if !f.opts.stopping.Swap(true) {
		close(f.stopped)
	}
}

// Close closes every database.
func (f *FSM) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return nil
	}
	f.closed = true
	close(f.changed)
	var errList []error
	for _, d := range f.dbs {
		d.stopProposer() // it may be cutting, under applyMu
		d.applyMu.Lock()
		// What the pipeline queued never committed here: out of the WAL
		// before the last connection closes (SQLite checkpoints then).
		d.cutLocked(errs.ErrClosed, true)
		errList = append(errList, d.walf.Sync(), d.rec.sync(), d.close())
		d.applyMu.Unlock()
	}
	if err := errors.Join(errList...); err != nil {
		return err
	}
	// Every write is synced: the next start can trust the files even
	// after the machine restarts.
	return writeBoot(f.dir)
}

// CheckName returns an error if name cannot be a new database next to
// the existing ones.
func (f *FSM) CheckName(name string) error {
	if err := ValidateName(name); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.dbs[name] != nil {
		return nil
	}
	return f.clash(name)
}

// clash refuses a name that differs from an existing database's only in
// case: the same file on macOS and Windows, two files on Linux, so nodes on
// different systems would diverge. f.mu is held.
func (f *FSM) clash(name string) error {
	for other := range f.dbs {
		if other != name && strings.EqualFold(other, name) {
			return fmt.Errorf("%w %q: differs from database %q only in case", errs.ErrInvalidName, name, other)
		}
	}
	return nil
}

// removeStale removes what an earlier run left of database name, never a
// file of an open database. f.mu is held.
func (f *FSM) removeStale(name string) error {
	for _, suffix := range []string{"", "-wal", "-shm", "-journal"} {
		p := filepath.Join(f.dir, name+suffix)
		st, err := os.Lstat(p)
		if err != nil {
			continue
		}
		for _, d := range f.dbs {
			for _, s := range []string{"", "-wal", "-shm"} {
				if open, err := os.Stat(d.path + s); err == nil && os.SameFile(st, open) {
					return fmt.Errorf("%w %q: its file %s is the file of database %q", errs.ErrInvalidName, name, p, d.Name)
				}
			}
		}
		f.opts.Logger.Warn("replacing a file this node cannot trust by the cluster's copy", "file", p)
		if err := os.Remove(p); err != nil {
			return fmt.Errorf("remove %s: %w", p, err)
		}
	}
	return nil
}

// open opens (creating it if needed) database name. newName is set for an
// Open entry: a name that clashes with an existing one is refused there,
// while a snapshot brings what the cluster already has.
func (f *FSM) open(name string, pageSize uint32, newName bool) (*DB, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return nil, errs.ErrClosed
	}
	if d := f.dbs[name]; d != nil {
		if d.pageSize != pageSize {
			return nil, fmt.Errorf("%w: %s exists with page size %d, not %d", errs.ErrDiverged, name, d.pageSize, pageSize)
		}
		return d, nil
	}
	if err := ValidateName(name); err != nil {
		return nil, err
	}
	if newName {
		if err := f.clash(name); err != nil {
			f.openErrs[name] = err
			return nil, err
		}
	}
	// New opened every database it could account for: a file here is
	// one it did not recognise as a database (a damaged header, say). It
	// cannot be trusted; the cluster's copy replaces it.
	if err := f.removeStale(name); err != nil {
		f.openErrs[name] = err
		return nil, err
	}
	d, err := openDB(f.dir, name, pageSize, &f.opts, nil)
	if err != nil {
		err = fmt.Errorf("%w: this node cannot open %s: %v; restart it to rebuild the database from the cluster", errs.ErrDiverged, name, err)
		f.openErrs[name] = err
		return nil, err
	}
	delete(f.openErrs, name)
	f.dbs[name] = d
	close(f.changed)
	f.changed = make(chan struct{})
	return d, nil
}

// Apply applies one committed log entry. Its response is nil or an error.
func (f *FSM) Apply(l *raft.Log) any {
	if l.Type != raft.LogCommand {
		return nil
	}
	f.sizes.add(l.Index, len(l.Data))
	f.lastSeen.Store(l.Index)
	defer f.done.set(l.Index)
	cmd, err := command.Decode(l.Data)
	if err != nil {
		f.opts.Logger.Error("cannot decode log entry", "index", l.Index, "err", err)
		return err
	}
	switch c := cmd.(type) {
	case *command.Open:
		if _, err := f.open(c.Database, c.PageSize, true); err != nil {
			f.opts.Logger.Error("cannot open database", "index", l.Index, "database", c.Database, "err", err)
			return err
		}
	case *command.Frames:
		d := f.Database(c.Database)
		if d == nil {
			if err := f.OpenError(c.Database); err != nil {
				return err // logged when the open failed
			}
			err := fmt.Errorf("%w: %s at index %d", errs.ErrNoDatabase, c.Database, l.Index)
			f.opts.Logger.Error("cannot apply frames", "err", err)
			return err
		}
		if l.Index <= d.applied.Load() {
			// Its files held this entry already when the node started.
			d.markDirty(c.Pages)
			f.stats.skipped.Add(1)
			return nil
		}
		if err := d.Failed(); err != nil {
			return err
		}
		if c.Term != 0 && c.Term != l.Term {
			// Built by a leader of term c.Term, on its state then, and
			// proposed when that leadership was over: it may have been
			// built on entries this log no longer holds.
			f.opts.Logger.Warn("not applying a transaction built in another term",
				"database", c.Database, "index", l.Index, "built", c.Term, "term", l.Term)
			if d.pending() {
				d.cut(errs.ErrLeadershipLost)
			}
			return fmt.Errorf("%w: the entry at index %d was built in term %d and logged in term %d",
				errs.ErrLeadershipLost, l.Index, c.Term, l.Term)
		}
		if d.claim(c, l.Index) {
			return nil
		}
		if d.pending() {
			// Another leader's entry (or ours, after our pipeline
			// failed): what this node queued will never commit here.
			d.cut(errs.ErrLeadershipLost)
		}
		// A disk that refuses the frames (full, failing) is retried until
		// it takes them: the node stops applying, and so stops taking
		// part, until then, but its copy stays whole.
		for attempt := 0; ; attempt++ {
			err = d.appendFrames(l.Index, c.PageSize, c.DBSize, c.Pages)
			if err == nil {
				break
			}
			if !d.retryDisk(err, attempt, "apply") {
				d.fail(fmt.Errorf("apply index %d: %w", l.Index, err))
				return d.Failed()
			}
		}
		f.stats.appended.Add(1)
		if d.applyMu.TryLock() {
			d.maybeCheckpoint()
			d.applyMu.Unlock()
		}
	}
	return nil
}

// dbSnapshot is the state of one database at the snapshot's index.
type dbSnapshot struct {
	d        *DB
	reader   *sqlite3.Conn // holds a read transaction on that state
	maxFrame uint32        // frames of the WAL to read (0: the file alone is current)
	pages    uint32
	index    uint64 // its last Frames entry
	dirty    bitmap // pages changed since the previous snapshot
}

type snapshot struct {
	dbs       []dbSnapshot
	logger    *slog.Logger
	metrics   *metrics.Set
	start     time.Time
	pages     int64 // written by Persist
	bytes     int64 // of those pages
	persisted bool  // and stored: the changed pages are in the store
}

// errCatchingUp refuses a snapshot while Raft replays what the files held.
var errCatchingUp = errors.New("not yet caught up after a restart")

// Snapshot pins, for each database, the state at the last applied entry:
// it opens a read transaction there (so that no checkpoint, ours or the
// application's, can change the pages it will read, and the WAL cannot
// restart under it), notes the last committed frame, takes the set of
// pages changed since the previous snapshot and blocks our own
// checkpoints. Persist then streams those pages. It is quick: no I/O but
// opening a connection and reading the wal-index header.
func (f *FSM) Snapshot() (raft.FSMSnapshot, error) {
	if last, held := f.lastSeen.Load(), f.heldAtStart.Load(); last < held {
		// The files hold entries Raft has not replayed yet: the sets of
		// changed pages miss theirs.
		return nil, fmt.Errorf("%w: replaying the log up to index %d, which the files held at start (at %d)",
			errCatchingUp, held, last)
	}
	s := &snapshot{logger: f.opts.Logger, metrics: f.opts.Metrics, start: time.Now()}
	for _, d := range f.Databases() {
		if err := d.Failed(); err != nil {
			// Its files miss entries: a snapshot must not claim them.
			s.giveBack()
			s.Release()
			return nil, fmt.Errorf("snapshot %s: %w", d.Name, err)
		}
		d.ckptMu.RLock()
		ds, err := d.pin()
		if err != nil {
			d.ckptMu.RUnlock()
			s.giveBack()
			s.Release()
			return nil, fmt.Errorf("snapshot %s: %w", d.Name, err)
		}
		ds.index = d.applied.Load()
		ds.dirty = d.takeDirty()
		s.dbs = append(s.dbs, ds)
	}
	return s, nil
}

// pin opens a read transaction on the database's current state and
// describes that state.
func (d *DB) pin() (ds dbSnapshot, err error) {
	ds.d = d
	ds.reader, err = sqlite3.Open(d.URI(0))
	if err != nil {
		return ds, err
	}
	ds.reader.Config(sqlite3.DBCONFIG_NO_CKPT_ON_CLOSE, true)
	var n int64
	if err = ds.reader.Exec(`BEGIN`); err == nil {
		err = queryInt(ds.reader, `SELECT count(*) FROM sqlite_schema`, &n)
	}
	if err != nil {
		ds.reader.Close()
		return ds, err
	}
	// nBackfill first: once every frame is in the file, the WAL may
	// restart (and the header change) at any moment, but the file stays.
	// The committed state only: the leader's queued transactions follow
	// it in the WAL.
	x := wal.NewIndex(d.shm)
	back, err := x.Backfilled()
	var hdr wal.IndexHeader
	if err == nil {
		hdr, err = d.committedHeader()
	}
	if err != nil {
		ds.reader.Close()
		return ds, err
	}
	ds.maxFrame, ds.pages = hdr.MaxFrame, hdr.DBSize
	if back >= hdr.MaxFrame {
		ds.maxFrame = 0
	}
	if ds.pages == 0 {
		// SQLite's "use the file's size", after recovering an empty WAL.
		st, err := os.Stat(d.path)
		if err != nil {
			ds.reader.Close()
			return ds, err
		}
		ds.pages = uint32(st.Size() / int64(d.pageSize))
	}
	return ds, nil
}

func (ds *dbSnapshot) release() {
	if ds.reader != nil {
		ds.reader.Close()
		ds.d.ckptMu.RUnlock()
		ds.reader = nil
	}
}

// giveBack returns the sets of changed pages to their databases, for a
// snapshot that was not stored.
func (s *snapshot) giveBack() {
	for i := range s.dbs {
		s.dbs[i].d.putDirty(s.dbs[i].dirty)
		s.dbs[i].dirty = nil
	}
}

// Persist writes the pages changed since the previous snapshot, page by
// page: memory O(page size), time O(pages changed).
func (s *snapshot) Persist(sink raft.SnapshotSink) error {
	w := bufio.NewWriterSize(sink, 1<<20)
	err := s.write(w)
	if err == nil {
		err = w.Flush()
	}
	if err == nil {
		err = sink.Close()
	} else {
		sink.Cancel()
	}
	if err != nil {
		s.giveBack()
		return err
	}
	s.persisted = true
	s.metrics.Snapshot(time.Since(s.start), s.bytes)
	s.logger.Info("snapshot taken", "id", sink.ID(), "databases", len(s.dbs), "pages", s.pages,
		"took", time.Since(s.start).Round(time.Microsecond).String())
	return nil
}

func (s *snapshot) write(w io.Writer) error {
	if err := writeStreamStart(w, kindDelta); err != nil {
		return err
	}
	for i := range s.dbs {
		ds := &s.dbs[i]
		d := ds.d
		h := dbHeader{DBMeta: DBMeta{Name: d.Name, PageSize: d.pageSize, Pages: ds.pages, Index: ds.index},
			count: ds.dirty.count(ds.pages)}
		if _, err := w.Write(h.encode()); err != nil {
			return err
		}
		dbf, err := os.Open(d.path)
		if err != nil {
			return err
		}
		err = ds.writePages(w, dbf)
		dbf.Close()
		if err != nil {
			return fmt.Errorf("snapshot %s: %w", d.Name, err)
		}
		ds.release()
		s.pages += int64(h.count)
		s.bytes += int64(h.count) * int64(d.pageSize)
	}
	return writeStreamEnd(w)
}

func (ds *dbSnapshot) writePages(w io.Writer, dbf *os.File) error {
	d := ds.d
	ps := int64(d.pageSize)
	page := make([]byte, ps)
	x := wal.NewIndex(d.shm)
	return ds.dirty.each(ds.pages, func(p uint32) error {
		if err := d.readPage(x, dbf, p, ds.maxFrame, page); err != nil {
			return err
		}
		crashpoint.Hit("snapshot-persist")
		return writePage(w, p, page)
	})
}

// readPage reads page p as of the state whose last frame is maxFrame.
func (d *DB) readPage(x *wal.Index, dbf *os.File, p, maxFrame uint32, page []byte) error {
	frame, err := x.Find(p, maxFrame)
	if err != nil {
		return err
	}
	if frame != 0 {
		_, err = d.walf.ReadAt(page, wal.FrameOffset(frame, len(page))+wal.FrameHeaderSize)
	} else {
		_, err = dbf.ReadAt(page, int64(p-1)*int64(len(page)))
	}
	if err != nil {
		return fmt.Errorf("read page %d: %w", p, err)
	}
	return nil
}

// Release unblocks the checkpoints of databases not yet persisted.
// Raft may release a snapshot it never persisted (a configuration change
// not yet applied, a shutdown): the changed pages go back for the next.
func (s *snapshot) Release() {
	for i := range s.dbs {
		s.dbs[i].release()
	}
	if !s.persisted {
		s.giveBack()
	}
}

// Restore makes every database of a full snapshot hold its content there.
// A database this node does not have yet is written straight to its file;
// one it has gets only the pages that differ, as one transaction through
// the follower path, so open connections keep working and readers switch
// to the new state atomically. Memory stays at a batch of pages.
func (f *FSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	sr, err := newStreamReader(rc)
	if err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	if sr.kind != kindFull {
		return fmt.Errorf("restore: %w: a delta", errStream)
	}
	crashpoint.Hit("install-current")
	for _, d := range f.Databases() {
		if d.pending() {
			d.cut(errs.ErrLeadershipLost) // a follower now: none will commit here
		}
	}
	start, n := time.Now(), 0
	for {
		h, ok, err := sr.next()
		if err != nil {
			return fmt.Errorf("restore: %w", err)
		}
		if !ok {
			f.heldAtStart.Store(0) // the databases hold the snapshot now
			if f.opts.SnapshotIndex != nil {
				f.done.set(f.opts.SnapshotIndex())
			}
			crashpoint.Hit("install-restored")
			f.opts.Logger.Info("snapshot restored", "databases", n, "took", time.Since(start).Round(time.Microsecond).String())
			return nil
		}
		n++
		if err := f.restoreDB(sr, h); err != nil {
			return fmt.Errorf("restore %s: %w", h.Name, err)
		}
		f.stats.restored.Add(1)
	}
}

func (f *FSM) restoreDB(sr *streamReader, h dbHeader) error {
	d := f.Database(h.Name)
	if d == nil && h.Pages > 0 {
		return f.create(sr, h)
	}
	d, err := f.open(h.Name, h.PageSize, false)
	if err != nil {
		return err
	}
	if h.Pages > 0 {
		if err := d.restore(sr, h); err != nil {
			d.fail(err)
			return err
		}
	}
	d.takeDirty() // the store's copy is this state now
	return nil
}

// create writes a database this node does not have from a snapshot, then
// opens it. Only the FSM's goroutine creates databases, so no one else
// can meanwhile.
func (f *FSM) create(sr *streamReader, h dbHeader) error {
	f.mu.Lock()
	err := f.removeStale(h.Name)
	f.mu.Unlock()
	if err != nil {
		return err
	}
	if err := copyPages(filepath.Join(f.dir, h.Name), sr, h, make([]byte, h.PageSize)); err != nil {
		return err
	}
	if err := syncDir(f.dir); err != nil {
		return err
	}
	crashpoint.Hit("install-create")
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return errs.ErrClosed
	}
	d, err := openDB(f.dir, h.Name, h.PageSize, &f.opts, &record{kind: recCommit, index: h.Index})
	if err != nil {
		err = fmt.Errorf("%w: this node cannot open %s: %v", errs.ErrDiverged, h.Name, err)
		f.openErrs[h.Name] = err
		return err
	}
	delete(f.openErrs, h.Name)
	f.dbs[h.Name] = d
	close(f.changed)
	f.changed = make(chan struct{})
	return nil
}

// restore appends the snapshot's pages that differ from the database's
// as one transaction, in batches.
func (d *DB) restore(sr *streamReader, h dbHeader) error {
	d.applyMu.Lock()
	defer d.applyMu.Unlock()
	if err := d.lockWrite(); err != nil {
		return err
	}
	defer d.apply.Exec(`ROLLBACK`)
	a, err := d.beginAppend(d.pageSize)
	if err != nil {
		return err
	}
	// The current state: frames up to a.last (none if the WAL restarted)
	// over the file.
	cur := a.hdr.DBSize
	if a.last == 0 || cur == 0 {
		st, err := os.Stat(d.path)
		if err != nil {
			return err
		}
		cur = uint32(st.Size() / int64(d.pageSize))
	}
	dbf, err := os.Open(d.path)
	if err != nil {
		return err
	}
	defer dbf.Close()
	ps := int(d.pageSize)
	batch := max(1, (1<<20)/ps)
	buf := make([]byte, batch*ps)
	mine := make([]byte, ps)
	list := make([]command.Page, 0, batch)
	x := wal.NewIndex(d.shm)
	for p := uint32(1); p <= h.Pages; p++ {
		data := buf[len(list)*ps : (len(list)+1)*ps]
		if _, err := sr.page(data); err != nil {
			return err
		}
		same := false
		if p <= cur && p != h.Pages {
			if err := d.readPage(x, dbf, p, a.last, mine); err != nil {
				return err
			}
			same = bytes.Equal(mine, data)
		}
		// The last page is always written: its frame carries the commit.
		if !same {
			list = append(list, command.Page{No: p, Data: data})
		}
		if len(list) == batch || p == h.Pages {
			commit := uint32(0)
			if p == h.Pages {
				commit = h.Pages
			}
			if err := a.write(list, commit); err != nil {
				return err
			}
			list = list[:0]
			crashpoint.Hit("install-restore") // pages in the WAL, no record
		}
	}
	return a.finish(h.Index, h.Pages, "")
}
