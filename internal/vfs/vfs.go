// Package vfs is the only place that touches the SQLite binding's VFS API.
//
// It registers one process-wide SQLite VFS, named [Name], that wraps the OS
// VFS. Of all the files SQLite opens through it, only the write-ahead logs
// of registered databases are wrapped: the main database file, the
// wal-index (-shm) and all locking stay the OS VFS's own.
//
// # The contract with the Committer
//
// For a registered WAL, the wrapper records every frame SQLite writes after
// the last committed frame, keyed by frame number, keeping the last image
// written to each slot (spills, in-place overwrites and savepoint rollbacks
// all reuse slots). When SQLite writes the commit frame (a frame header
// whose "database size after commit" is not zero), the wrapper holds that
// frame back and calls [Committer.Commit] with the transaction's pages:
//
//   - Commit runs on the goroutine executing SQLite's COMMIT, while that
//     connection holds the database's WAL write lock. It must not take
//     that lock, directly or by waiting for something that does.
//   - If Commit returns nil, the wrapper writes the commit frame and SQLite
//     publishes the transaction to readers.
//   - If Commit returns an error, the wrapper reports SQLITE_IOERR_WRITE:
//     SQLite rolls the transaction back, readers never saw it, and the
//     connection stays usable. The Committer keeps the real cause for the
//     driver, keyed by the connection ID that Commit received.
//
// Frames written outside SQLite (a follower appending replicated frames)
// must be reported with [Committed], or the wrapper's idea of where the
// current transaction starts goes stale.
package vfs

import (
	"errors"
	"fmt"
	"path/filepath"
	"sort"
	"strconv"
	"sync"
	"syscall"

	"github.com/ncruces/go-sqlite3"
	"github.com/ncruces/go-sqlite3/util/vfsutil"
	sqlitevfs "github.com/ncruces/go-sqlite3/vfs"

	"github.com/godqlite/dqlite/internal/command"
	"github.com/godqlite/dqlite/internal/crashpoint"
	"github.com/godqlite/dqlite/internal/faults"
	"github.com/godqlite/dqlite/wal"
)

// Name is the name under which the VFS is registered with SQLite.
const Name = "dqlite"

// ConnParam is the URI parameter that carries a connection's ID, so that
// [Committer.Commit] can tell connections apart.
const ConnParam = "_dqconn"

// Tx is a transaction captured at its commit frame.
type Tx struct {
	PageSize uint32
	DBSize   uint32         // database size in pages after the commit
	Pages    []command.Page // last image of each page, in first-write order
	Size     int64          // bytes of page images the transaction wrote
	Overflow bool           // Size passed the limit: Pages is incomplete
}

// Committer replicates transactions of one database. See the package doc.
type Committer interface {
	Commit(conn uint64, tx *Tx) error
	// Written is called once the commit frame of a transaction that Commit
	// accepted is in the WAL, at frame number frame of the WAL generation
	// with salt, before SQLite publishes it. An error is handled as a
	// failed write of that frame.
	Written(conn uint64, frame uint32, salt [2]uint32) error
	// DiskError is called when the disk refused a write of the WAL.
	DiskError(err error)
	// Retry is called when the commit frame of a transaction that Commit
	// accepted could not be written (attempt counts from 0). It returns
	// whether to try again, after waiting as long as it sees fit.
	Retry(err error, attempt int) bool
	// Diverged is called when the commit frame of a transaction that Commit
	// accepted could not be written and Retry gave up: this node's copy no longer matches
	// the cluster's and must not be served.
	Diverged(conn uint64, err error)
}

type frame struct {
	pgno    uint32
	dbSize  uint32
	data    []byte // nil once the transaction passed its size limit
	counted bool   // its page is counted in walState.size
}

// walState is shared by every connection to one WAL file.
type walState struct {
	mu sync.Mutex
	// unpublished: the last local transaction is committed (by Raft and
	// by its commit frame) and SQLite may still be finishing it (checksum
	// rewrites, sync); its writes must not fail. Until the next frame of a
	// new transaction, a new WAL, or the FSM appending.
	unpublished bool
	committer   Committer
	limit       int64
	pageSize    int
	lastCommit  uint32            // frame number of the last commit frame
	frames      map[uint32]*frame // frames after lastCommit
	maxFrame    uint32            // highest frame number in frames
	size        int64             // bytes held in frames
	overflow    bool
	held        []byte // header of the commit frame, held back
	heldFrame   uint32
}

func (s *walState) reset(pageSize int) {
	s.pageSize = pageSize
	s.lastCommit = 0
	s.dropTx()
}

// dropFrom forgets the frames numbered n and above.
func (s *walState) dropFrom(n uint32) {
	if n > s.maxFrame {
		return // appending: the common case costs nothing
	}
	for i, fr := range s.frames {
		if i >= n {
			if fr.counted {
				s.size -= int64(s.pageSize)
			}
			delete(s.frames, i)
		}
	}
	s.maxFrame = n - 1
}

func (s *walState) dropTx() {
	clear(s.frames)
	s.maxFrame = 0
	s.size = 0
	s.overflow = false
	s.held = nil
	s.heldFrame = 0
}

var (
	registerOnce sync.Once
	mu           sync.Mutex
	states       = map[string]*walState{}
)

// canonical returns the path SQLite will use for name: absolute, with the
// directory's symbolic links resolved.
func canonical(name string) (string, error) {
	abs, err := filepath.Abs(name)
	if err != nil {
		return "", err
	}
	dir, err := filepath.EvalSymlinks(filepath.Dir(abs))
	if err != nil {
		return "", err
	}
	return filepath.Join(dir, filepath.Base(abs)), nil
}

// Register makes the VFS available to SQLite and routes the commits of the
// database file at dbPath to c. Transactions whose page images exceed
// maxTxSize bytes reach c with Overflow set. It returns the canonical path.
func Register(dbPath string, c Committer, maxTxSize int64) (string, error) {
	registerOnce.Do(func() { sqlitevfs.Register(Name, dqVFS{sqlitevfs.Find("")}) })
	p, err := canonical(dbPath)
	if err != nil {
		return "", err
	}
	mu.Lock()
	defer mu.Unlock()
	if _, ok := states[p+"-wal"]; ok {
		return "", fmt.Errorf("vfs: %s is already registered", p)
	}
	states[p+"-wal"] = &walState{committer: c, limit: maxTxSize, frames: map[uint32]*frame{}}
	return p, nil
}

// Unregister stops routing commits of dbPath (a path Register returned).
func Unregister(dbPath string) {
	mu.Lock()
	delete(states, dbPath+"-wal")
	mu.Unlock()
}

// Committed tells the VFS that the WAL of dbPath (a path Register returned)
// now ends with a commit at frame number last, with pages of pageSize
// bytes: the next transaction's frames start after it.
func Committed(dbPath string, last uint32, pageSize int) {
	mu.Lock()
	s := states[dbPath+"-wal"]
	mu.Unlock()
	if s == nil {
		return
	}
	s.mu.Lock()
	s.pageSize = pageSize
	s.lastCommit = last
	s.dropTx()
	s.unpublished = false
	s.mu.Unlock()
}

type dqVFS struct{ sqlitevfs.VFS }

func (v dqVFS) Open(name string, flags sqlitevfs.OpenFlag) (sqlitevfs.File, sqlitevfs.OpenFlag, error) {
	return vfsutil.WrapOpen(v.VFS, name, flags)
}

func (v dqVFS) OpenFilename(name *sqlitevfs.Filename, flags sqlitevfs.OpenFlag) (sqlitevfs.File, sqlitevfs.OpenFlag, error) {
	f, flags, err := vfsutil.WrapOpenFilename(v.VFS, name, flags)
	if err != nil || flags&sqlitevfs.OPEN_WAL == 0 || name == nil {
		return f, flags, err
	}
	mu.Lock()
	s := states[name.String()]
	mu.Unlock()
	if s == nil {
		return f, flags, nil
	}
	conn, _ := strconv.ParseUint(name.URIParameter(ConnParam), 10, 64)
	w := &walFile{File: f, state: s, conn: conn, name: name.String()}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.pageSize == 0 {
		var b [wal.HeaderSize]byte
		if n, _ := f.ReadAt(b[:], 0); n == len(b) {
			if h, err := wal.DecodeHeader(b[:]); err == nil {
				s.pageSize = int(h.PageSize)
			}
		}
	}
	return w, flags, nil
}

// walFile wraps the WAL of a replicated database.
type walFile struct {
	sqlitevfs.File
	state *walState
	conn  uint64
	name  string
}

func (w *walFile) Unwrap() sqlitevfs.File { return w.File }

// zeros reserves a commit frame's space.
var zeros [wal.FrameHeaderSize + 65536]byte

// write is every write to the WAL, after asking the fault layer.
func (w *walFile) write(p []byte, off int64) (int, error) {
	if err := faults.Write(w.name, off, int64(len(p)), w.File.Size); err != nil {
		return 0, err
	}
	return w.File.WriteAt(p, off)
}

// put is write for SQLite: it gets its error codes. Before Raft, a disk
// that refuses a write fails the transaction (SQLITE_FULL, or an I/O
// error), and the committer hears of it: a leader that cannot write
// should stop leading.
func (w *walFile) put(p []byte, off int64) (int, error) {
	n, err := w.write(p, off)
	if err != nil && faults.IsDisk(err) {
		w.state.committer.DiskError(err)
	}
	return n, sqliteErr(err)
}

// Sync asks the fault layer before syncing the WAL. A failed sync of a
// transaction that Raft committed (with PRAGMA synchronous=FULL) is not an
// error: its durability is the Raft log's, which a quorum synced, and a
// node rebuilds its databases from that log when it restarts. Failing it
// would make SQLite roll back locally what the cluster committed.
func (w *walFile) Sync(flags sqlitevfs.SyncFlag) error {
	err := faults.Sync(w.name)
	if err == nil {
		err = w.File.Sync(flags)
	}
	if err == nil {
		return nil
	}
	s := w.state
	s.mu.Lock()
	unpublished := s.unpublished
	s.mu.Unlock()
	if unpublished {
		return nil
	}
	return sqlitevfs.SystemError(err, sqlite3.IOERR_FSYNC)
}

// sqliteErr is what SQLite reports for a failed write: "database or disk
// is full" for no space, an I/O error otherwise.
func sqliteErr(err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, syscall.ENOSPC) {
		return sqlitevfs.SystemError(err, sqlite3.FULL)
	}
	return sqlitevfs.SystemError(err, sqlite3.IOERR_WRITE)
}

// DeviceCharacteristics reports POWERSAFE_OVERWRITE so that SQLite never
// splits or pads frame writes.
func (w *walFile) DeviceCharacteristics() sqlitevfs.DeviceCharacteristic {
	return w.File.DeviceCharacteristics() | sqlitevfs.IOCAP_POWERSAFE_OVERWRITE
}

func (w *walFile) Truncate(size int64) error {
	if size == 0 {
		crashpoint.Hit("checkpoint-backfilled") // by a TRUNCATE checkpoint
	}
	s := w.state
	s.mu.Lock()
	if size <= wal.HeaderSize {
		s.lastCommit = 0
		s.dropTx()
		s.unpublished = false
	}
	s.mu.Unlock()
	return w.File.Truncate(size)
}

func (w *walFile) WriteAt(p []byte, off int64) (int, error) {
	s := w.state
	s.mu.Lock()
	defer s.mu.Unlock()

	if off == 0 {
		// A new WAL header: SQLite restarted the log.
		s.unpublished = false
		h, err := wal.DecodeHeader(p)
		if err != nil {
			return 0, sqlite3.IOERR_WRITE
		}
		s.reset(int(h.PageSize))
		return w.put(p, off)
	}
	n, within, ok := wal.FrameAt(off, s.pageSize)
	if !ok {
		return 0, sqlite3.IOERR_WRITE
	}
	if n <= s.lastCommit {
		// walRewriteChecksums rewriting headers of a committed transaction.
		if s.unpublished {
			return w.mustWrite(p, off, nil, 0)
		}
		return w.put(p, off)
	}
	s.unpublished = false
	switch {
	case within == 0 && len(p) == wal.FrameHeaderSize:
		// SQLite writes a frame header only to append a frame (an in-place
		// overwrite writes the page alone). So frames from n on are stale:
		// left by a rolled-back transaction, or by a savepoint rollback.
		if n == s.lastCommit+1 {
			s.dropTx()
		} else {
			s.dropFrom(n)
		}
		fh, _ := wal.DecodeFrameHeader(p)
		fr := s.frames[n]
		if fr == nil {
			fr = &frame{}
			s.frames[n] = fr
		}
		s.maxFrame = max(s.maxFrame, n)
		fr.pgno, fr.dbSize = fh.PageNo, fh.DBSize
		if fh.Commit() {
			s.held = append(s.held[:0], p...)
			s.heldFrame = n
			return len(p), nil
		}
		return w.put(p, off)

	case within == wal.FrameHeaderSize && len(p) == s.pageSize:
		fr := s.frames[n]
		if fr == nil {
			return 0, sqlite3.IOERR_WRITE // page data before its header
		}
		if !fr.counted {
			fr.counted = true
			s.size += int64(len(p))
		}
		if s.size > s.limit && s.limit > 0 {
			s.overflow = true
			fr.data = nil
		} else {
			fr.data = append(fr.data[:0], p...)
		}
		if n == s.heldFrame {
			return w.commit(n, p, off)
		}
		return w.put(p, off)
	}
	// SQLite splits frame writes only without POWERSAFE_OVERWRITE, which we
	// always report; anything else is a write we cannot replicate.
	return 0, sqlite3.IOERR_WRITE
}

// commit replicates the transaction ending at frame n, whose page data is
// p at offset off, then writes the held-back commit frame.
func (w *walFile) commit(n uint32, p []byte, off int64) (int, error) {
	s := w.state
	held := s.held
	tx := &Tx{PageSize: uint32(s.pageSize), DBSize: s.frames[n].dbSize, Size: s.size, Overflow: s.overflow}
	if !tx.Overflow {
		nums := make([]uint32, 0, len(s.frames))
		for i := range s.frames {
			if i > s.lastCommit && i <= n {
				nums = append(nums, i)
			}
		}
		sort.Slice(nums, func(i, j int) bool { return nums[i] < nums[j] })
		index := map[uint32]int{}
		for _, i := range nums {
			fr := s.frames[i]
			if fr.data == nil {
				s.dropTx()
				return 0, sqlite3.IOERR_WRITE
			}
			if j, ok := index[fr.pgno]; ok {
				tx.Pages[j].Data = fr.data
				continue
			}
			index[fr.pgno] = len(tx.Pages)
			tx.Pages = append(tx.Pages, command.Page{No: fr.pgno, Data: fr.data})
		}
	}
	// Raft runs without the state's mutex: the FSM may need to open the
	// WAL meanwhile (a snapshot does). Nothing else can touch this WAL's
	// state: this connection holds SQLite's write lock.
	// Reserve the commit frame's space before Raft, so that once Raft has
	// committed the transaction, writing the frame needs no block that a
	// full disk may not have. A zeroed frame header is never valid: a
	// crash before the real frame is written leaves the WAL as it was.
	if _, err := w.put(zeros[:wal.FrameHeaderSize+len(p)], off-wal.FrameHeaderSize); err != nil {
		s.dropTx()
		return 0, err
	}
	s.mu.Unlock()
	err := s.committer.Commit(w.conn, tx)
	s.mu.Lock()
	if err != nil {
		s.dropTx()
		return 0, sqlite3.IOERR_WRITE
	}
	// Raft committed the transaction: its commit frame must reach the WAL.
	m, err := w.mustWrite(held, off-wal.FrameHeaderSize, p, off)
	if err != nil {
		return m, err
	}
	fh, _ := wal.DecodeFrameHeader(held)
	if err := s.committer.Written(w.conn, n, fh.Salt); err != nil {
		s.committer.Diverged(w.conn, err)
		return 0, sqlitevfs.SystemError(err, sqlite3.IOERR_WRITE)
	}
	s.lastCommit = n
	s.dropTx()
	s.unpublished = true
	return m, nil
}

// mustWrite writes the pairs (bytes, offset) of a transaction that Raft
// committed. A disk that refuses them (full, failing) is retried until it
// takes them, for as long as the committer says: meanwhile the connection
// keeps the write lock, so no reader sees the database without the
// transaction and no later one starts. It returns what the last write
// returned. s.mu is held.
func (w *walFile) mustWrite(p1 []byte, off1 int64, p2 []byte, off2 int64) (int, error) {
	s := w.state
	for attempt := 0; ; attempt++ {
		m, err := w.write(p1, off1)
		if err == nil && p2 != nil {
			m, err = w.write(p2, off2)
		}
		if err == nil {
			return m, nil
		}
		s.mu.Unlock()
		retry := s.committer.Retry(err, attempt)
		s.mu.Lock()
		if !retry {
			// Never SQLITE_FULL here: that error means nothing replicated.
			s.committer.Diverged(w.conn, err)
			return 0, sqlitevfs.SystemError(err, sqlite3.IOERR_WRITE)
		}
	}
}
