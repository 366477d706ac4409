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
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/hashicorp/raft"
	"github.com/ncruces/go-sqlite3"

	"github.com/godqlite/dqlite/internal/command"
	"github.com/godqlite/dqlite/internal/errs"
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
}

var _ raft.FSM = (*FSM)(nil)

// New returns the FSM of the databases in dir. Database files left by an
// earlier run are removed: Raft rebuilds them from the latest snapshot and
// the log after it, so that no reader ever sees a state that mixes a newer
// file with replayed older entries.
func New(dir string, opts Options) (*FSM, error) {
	if err := removeDatabases(dir); err != nil {
		return nil, err
	}
	opts.stopping = new(atomic.Bool)
	return &FSM{dir: dir, opts: opts, dbs: map[string]*DB{}, openErrs: map[string]error{},
		changed: make(chan struct{})}, nil
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

// SetAfterCommit installs a test hook that runs when a local transaction
// is known committed, before its commit frame is written. Call it before
// the first database opens.
func (f *FSM) SetAfterCommit(hook func()) { f.opts.afterCommit = hook }

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
func (f *FSM) Stop() { f.opts.stopping.Store(true) }

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
		d.applyMu.Lock()
		errList = append(errList, d.close())
		d.applyMu.Unlock()
	}
	return errors.Join(errList...)
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
	// Every database is rebuilt from the snapshot and the log: a file
	// here is one New did not recognise as a database (a damaged header,
	// say). It cannot be trusted; the cluster's copy replaces it.
	if err := f.removeStale(name); err != nil {
		f.openErrs[name] = err
		return nil, err
	}
	d, err := openDB(f.dir, name, pageSize, &f.opts)
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
		if err := d.Failed(); err != nil {
			return err
		}
		if d.claim(c) {
			return nil
		}
		// A disk that refuses the frames (full, failing) is retried until
		// it takes them: the node stops applying, and so stops taking
		// part, until then, but its copy stays whole.
		for attempt := 0; ; attempt++ {
			err = d.appendFrames(c.PageSize, c.DBSize, c.Pages)
			if err == nil {
				break
			}
			if !d.retryDisk(err, attempt, "apply") {
				d.fail(fmt.Errorf("apply index %d: %w", l.Index, err))
				return d.Failed()
			}
		}
		if d.applyMu.TryLock() {
			d.maybeCheckpoint()
			d.applyMu.Unlock()
		}
	}
	return nil
}

const snapshotMagic = "dqlite snapshot 1\n"

// dbSnapshot is the state of one database at the snapshot's index.
type dbSnapshot struct {
	d        *DB
	reader   *sqlite3.Conn // holds a read transaction on that state
	maxFrame uint32        // frames of the WAL to read (0: the file alone is current)
	pages    uint32
}

type snapshot struct {
	dbs []dbSnapshot
}

// Snapshot pins, for each database, the state at the last applied entry:
// it opens a read transaction there (so that no checkpoint, ours or the
// application's, can change the pages it will read, and the WAL cannot
// restart under it), notes the last committed frame and blocks our own
// checkpoints. Persist then streams the pages. It is quick: no I/O but
// opening a connection and reading the wal-index header.
func (f *FSM) Snapshot() (raft.FSMSnapshot, error) {
	s := &snapshot{}
	for _, d := range f.Databases() {
		d.waitSettled()
		d.ckptMu.RLock()
		ds, err := d.pin()
		if err != nil {
			d.ckptMu.RUnlock()
			s.Release()
			return nil, fmt.Errorf("snapshot %s: %w", d.Name, err)
		}
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
	x := wal.NewIndex(d.shm)
	back, err := x.Backfilled()
	var hdr wal.IndexHeader
	if err == nil {
		hdr, err = x.Header()
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
	if ds.d != nil {
		ds.reader.Close()
		ds.d.ckptMu.RUnlock()
		ds.d = nil
	}
}

// Persist writes every database page by page: memory O(page size).
func (s *snapshot) Persist(sink raft.SnapshotSink) error {
	w := bufio.NewWriterSize(sink, 1<<20)
	err := s.write(w)
	if err == nil {
		err = w.Flush()
	}
	if err != nil {
		sink.Cancel()
		return err
	}
	return sink.Close()
}

func (s *snapshot) write(w io.Writer) error {
	if _, err := io.WriteString(w, snapshotMagic); err != nil {
		return err
	}
	for i := range s.dbs {
		ds := &s.dbs[i]
		d := ds.d
		var hdr []byte
		hdr = binary.AppendUvarint(hdr, uint64(len(d.Name)))
		hdr = append(hdr, d.Name...)
		hdr = binary.BigEndian.AppendUint32(hdr, d.pageSize)
		hdr = binary.BigEndian.AppendUint32(hdr, ds.pages)
		if _, err := w.Write(hdr); err != nil {
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
	}
	_, err := w.Write([]byte{0})
	return err
}

func (ds *dbSnapshot) writePages(w io.Writer, dbf *os.File) error {
	d := ds.d
	ps := int64(d.pageSize)
	page := make([]byte, ps)
	x := wal.NewIndex(d.shm)
	for p := uint32(1); p <= ds.pages; p++ {
		frame, err := x.Find(p, ds.maxFrame)
		if err != nil {
			return err
		}
		if frame != 0 {
			_, err = d.walf.ReadAt(page, wal.FrameOffset(frame, int(ps))+wal.FrameHeaderSize)
		} else {
			_, err = dbf.ReadAt(page, int64(p-1)*ps)
		}
		if err != nil {
			return fmt.Errorf("read page %d: %w", p, err)
		}
		if _, err := w.Write(page); err != nil {
			return err
		}
	}
	return nil
}

// Release unblocks the checkpoints of databases not yet persisted.
func (s *snapshot) Release() {
	for i := range s.dbs {
		s.dbs[i].release()
	}
}

// Restore replaces every database in the snapshot by its content there. It
// writes the pages as one transaction through the follower path, so open
// connections keep working and readers switch to the new state atomically.
func (f *FSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	r := bufio.NewReaderSize(rc, 1<<20)
	magic := make([]byte, len(snapshotMagic))
	if _, err := io.ReadFull(r, magic); err != nil || string(magic) != snapshotMagic {
		return fmt.Errorf("restore: not a dqlite snapshot")
	}
	for {
		n, err := binary.ReadUvarint(r)
		if err != nil {
			return fmt.Errorf("restore: %w", err)
		}
		if n == 0 {
			return nil
		}
		if n > 255 {
			return fmt.Errorf("restore: database name of %d bytes", n)
		}
		var head = make([]byte, n+8)
		if _, err := io.ReadFull(r, head); err != nil {
			return fmt.Errorf("restore: %w", err)
		}
		name := string(head[:n])
		pageSize := binary.BigEndian.Uint32(head[n:])
		pages := binary.BigEndian.Uint32(head[n+4:])
		if !wal.ValidPageSize(int(pageSize)) {
			return fmt.Errorf("restore %s: page size %d, %d pages", name, pageSize, pages)
		}
		d, err := f.open(name, pageSize, false)
		if err != nil {
			return fmt.Errorf("restore %s: %w", name, err)
		}
		if pages == 0 {
			continue // created, never written
		}
		if err := d.restore(r, pages); err != nil {
			d.fail(err)
			return fmt.Errorf("restore %s: %w", name, err)
		}
	}
}

// restore appends the snapshot's pages as one transaction, in batches.
func (d *DB) restore(r io.Reader, pages uint32) error {
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
	batch := max(1, (1<<20)/int(d.pageSize))
	buf := make([]byte, batch*int(d.pageSize))
	list := make([]command.Page, 0, batch)
	for p := uint32(1); p <= pages; {
		list = list[:0]
		for i := 0; i < batch && p <= pages; i, p = i+1, p+1 {
			data := buf[i*int(d.pageSize) : (i+1)*int(d.pageSize)]
			if _, err := io.ReadFull(r, data); err != nil {
				return err
			}
			list = append(list, command.Page{No: p, Data: data})
		}
		commit := uint32(0)
		if p > pages {
			commit = pages
		}
		if err := a.write(list, commit); err != nil {
			return err
		}
	}
	if err := a.publish(pages); err != nil {
		return err
	}
	vfsCommitted(d, a.max)
	return nil
}
