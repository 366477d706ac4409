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
// all reuse slots). Once SQLite has written the commit frame (a frame
// header whose "database size after commit" is not zero), the wrapper
// calls [Committer.Commit] with the transaction's pages:
//
//   - Commit runs on the goroutine executing SQLite's COMMIT, while that
//     connection holds the database's WAL write lock. It must not take
//     that lock, directly or by waiting for something that does.
//   - If Commit returns nil, SQLite goes on to publish the transaction in
//     the wal-index (it may still fail, and roll back, before it does: the
//     Committer learns which from the wal-index).
//   - If Commit returns an error, the wrapper reports SQLITE_IOERR_WRITE:
//     SQLite rolls the transaction back, readers never saw it, and the
//     connection stays usable. The Committer keeps the real cause for the
//     driver, keyed by the connection ID that Commit received.
//
// Frames written outside SQLite (a follower appending replicated frames,
// a cut of the leader's uncommitted transactions) must be reported with
// [Committed], or the wrapper's idea of where the current transaction
// starts goes stale.
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
	PageSize  uint32
	DBSize    uint32         // database size in pages after the commit
	Pages     []command.Page // last image of each page, in first-write order
	Size      int64          // bytes of page images the transaction wrote
	Overflow  bool           // Size passed the limit: Pages is incomplete
	Frame     uint32         // the commit frame's number
	Salt      [2]uint32      // of the WAL generation
	BigEndian bool           // the WAL's checksums use big-endian words
}

// Committer replicates transactions of one database. See the package doc.
type Committer interface {
	Commit(conn uint64, tx *Tx) error
	// DiskError is called when the disk refused a write of the WAL.
	DiskError(err error)
}

type frame struct {
	pgno    uint32
	dbSize  uint32
	data    []byte // nil once the transaction passed its size limit
	counted bool   // its page is counted in walState.size
}

// walState is shared by every connection to one WAL file.
type walState struct {
	mu         sync.Mutex
	committer  Committer
	limit      int64
	pageSize   int
	bigEndian  bool
	salt       [2]uint32         // of the WAL's header
	lastCommit uint32            // frame number of the last commit frame
	frames     map[uint32]*frame // frames after lastCommit
	maxFrame   uint32            // highest frame number in frames
	size       int64             // bytes held in frames
	overflow   bool
	inPlace    bool   // a frame of the transaction was overwritten in place
	held       []byte // header of the commit frame, until its page is written
	heldFrame  uint32
	// rewriteTo: SQLite is rewriting the checksums of the last committed
	// transaction's frame headers, up to this frame (after a transaction
	// that overwrote frames in place); 0 when not.
	rewriteTo uint32
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
	s.inPlace = false
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
// bytes, in the generation of salt: the next transaction's frames start
// after it.
func Committed(dbPath string, last uint32, pageSize int, salt [2]uint32, bigEndian bool) {
	mu.Lock()
	s := states[dbPath+"-wal"]
	mu.Unlock()
	if s == nil {
		return
	}
	s.mu.Lock()
	s.pageSize = pageSize
	s.salt, s.bigEndian = salt, bigEndian
	s.lastCommit = last
	s.dropTx()
	s.rewriteTo = 0
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
				s.bigEndian = h.BigEndian
				s.salt = h.Salt
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

// Sync asks the fault layer before syncing the WAL. A failed sync is not
// an error: a transaction's durability is the Raft log's, which a quorum
// synced, and a node whose files a machine crash may have damaged rebuilds
// them from that log (DESIGN.md, "Restart"). Failing it would fail a
// commit for nothing.
func (w *walFile) Sync(flags sqlitevfs.SyncFlag) error {
	if err := faults.Sync(w.name); err != nil {
		return nil
	}
	w.File.Sync(flags)
	return nil
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
		s.rewriteTo = 0
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
		h, err := wal.DecodeHeader(p)
		if err != nil {
			return 0, sqlite3.IOERR_WRITE
		}
		s.reset(int(h.PageSize))
		s.bigEndian = h.BigEndian
		s.salt = h.Salt
		s.rewriteTo = 0
		return w.put(p, off)
	}
	n, within, ok := wal.FrameAt(off, s.pageSize)
	if !ok {
		return 0, sqlite3.IOERR_WRITE
	}
	if n <= s.lastCommit {
		if s.rewriteTo != 0 && n <= s.rewriteTo && within == 0 && len(p) == wal.FrameHeaderSize {
			// walRewriteChecksums rewriting the headers of the transaction
			// just committed.
			if n == s.rewriteTo {
				s.rewriteTo = 0
			}
			return w.put(p, off)
		}
		// SQLite failed after the last commit frame and rolled that
		// transaction back (it never published it): its slots are this
		// transaction's.
		s.lastCommit = n - 1
		s.dropTx()
	}
	s.rewriteTo = 0
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
		} else {
			s.inPlace = true // SQLite will rewrite the checksums at commit
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

// commit writes the commit frame of the transaction ending at frame n,
// whose page data is p at offset off, and hands the transaction to the
// committer.
func (w *walFile) commit(n uint32, p []byte, off int64) (int, error) {
	s := w.state
	held := s.held
	// The salt is the WAL header's: a transaction that overwrites frames in
	// place writes its frame headers with zeros there, and SQLite fills
	// them in after the commit frame.
	tx := &Tx{PageSize: uint32(s.pageSize), DBSize: s.frames[n].dbSize, Size: s.size, Overflow: s.overflow,
		Frame: n, Salt: s.salt, BigEndian: s.bigEndian}
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
	// The frame first: a disk that refuses it fails the transaction before
	// anything is queued.
	if _, err := w.put(held, off-wal.FrameHeaderSize); err != nil {
		s.dropTx()
		return 0, err
	}
	m, err := w.put(p, off)
	if err != nil {
		s.dropTx()
		return 0, err
	}
	// The committer runs without the state's mutex: it may wait for a
	// checkpoint, which truncates this WAL. Nothing else can touch this
	// WAL's state: this connection holds SQLite's write lock.
	s.mu.Unlock()
	err = s.committer.Commit(w.conn, tx)
	s.mu.Lock()
	inPlace := s.inPlace
	s.dropTx()
	if err != nil {
		return 0, sqlite3.IOERR_WRITE
	}
	s.lastCommit = n
	if inPlace {
		s.rewriteTo = n
	}
	return m, nil
}
