package fsm

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"

	"github.com/godqlite/dqlite/wal"
)

// The applied log of a database records which Raft entry its files hold:
// for every transaction, the WAL generation (its salts) and frame number
// of its commit frame, with the Raft index of the entry that carried it.
// A node that restarts reads it back to learn the exact index its files
// are at, and applies only the entries after it (see recoverDB and
// DESIGN.md, "Restart").
//
// Records are written after the frames they name and before the
// transaction is published, without fsync: a process crash loses neither,
// and a machine crash is detected at start (see bootState).

const (
	appliedDir = "applied"
	recordSize = 32
	// recHeader starts every applied log: it carries the page size, so a
	// database with no content yet can be opened again.
	recHeader = 'H'
	// recCommit names a transaction: its commit frame in the WAL
	// generation of the salts, or, with frame 0, a database file that holds
	// the state at the index with no WAL (written by a snapshot install).
	recCommit = 'C'
)

var crcTable = crc32.MakeTable(crc32.Castagnoli)

type record struct {
	kind     byte
	frame    uint32
	salt     [2]uint32
	index    uint64
	pageSize uint32
}

func (r record) encode() []byte {
	b := make([]byte, recordSize)
	b[0] = r.kind
	binary.BigEndian.PutUint32(b[4:], r.frame)
	binary.BigEndian.PutUint32(b[8:], r.salt[0])
	binary.BigEndian.PutUint32(b[12:], r.salt[1])
	binary.BigEndian.PutUint64(b[16:], r.index)
	binary.BigEndian.PutUint32(b[24:], r.pageSize)
	binary.BigEndian.PutUint32(b[28:], crc32.Checksum(b[:28], crcTable))
	return b
}

func decodeRecord(b []byte) (record, bool) {
	if len(b) < recordSize || binary.BigEndian.Uint32(b[28:]) != crc32.Checksum(b[:28], crcTable) {
		return record{}, false
	}
	r := record{kind: b[0], frame: binary.BigEndian.Uint32(b[4:]),
		salt:     [2]uint32{binary.BigEndian.Uint32(b[8:]), binary.BigEndian.Uint32(b[12:])},
		index:    binary.BigEndian.Uint64(b[16:]),
		pageSize: binary.BigEndian.Uint32(b[24:])}
	return r, r.kind == recHeader || r.kind == recCommit
}

// appliedPath is where the applied log of database name lives.
func appliedPath(dir, name string) string {
	return filepath.Join(dir, appliedDir, name+".rec")
}

// readRecords returns the records of an applied log up to the first one
// that is torn or damaged.
func readRecords(path string) ([]record, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var recs []record
	for off := 0; off+recordSize <= len(b); off += recordSize {
		r, ok := decodeRecord(b[off:])
		if !ok {
			break
		}
		recs = append(recs, r)
	}
	return recs, nil
}

// appliedLog appends records to a database's applied log.
type appliedLog struct {
	f    *os.File
	size int64
}

// writeAppliedLog replaces the applied log at path by recs, atomically
// (a new file renamed over the old), and opens it for appending.
//
// old, if not nil, is the open log at path: it is closed before the rename
// (Windows renames no file that is open) and, if the rename fails, opened
// again and returned with the error. An error with a nil log means the
// database must not be written any more: its log is unknown.
func writeAppliedLog(path string, recs []record, old *appliedLog) (*appliedLog, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return old, err
	}
	var b []byte
	for _, r := range recs {
		b = append(b, r.encode()...)
	}
	tmp := path + ".tmp"
	if err := writeFileSync(tmp, b); err != nil {
		return old, err
	}
	size := int64(len(b))
	if old != nil {
		old.close()
	}
	if err := os.Rename(tmp, path); err != nil {
		if old == nil {
			return nil, err
		}
		f, oerr := os.OpenFile(path, os.O_RDWR, 0o644)
		if oerr != nil {
			return nil, errors.Join(err, oerr)
		}
		return &appliedLog{f: f, size: old.size}, err
	}
	// A machine crash may undo the rename if this fails: the start after
	// one does not trust the files anyway.
	syncDir(filepath.Dir(path))
	f, err := os.OpenFile(path, os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	return &appliedLog{f: f, size: size}, nil
}

func (l *appliedLog) append(r record) error {
	if _, err := l.f.WriteAt(r.encode(), l.size); err != nil {
		return fmt.Errorf("applied log: %w", err)
	}
	l.size += recordSize
	return nil
}

func (l *appliedLog) sync() error  { return l.f.Sync() }
func (l *appliedLog) close() error { return l.f.Close() }

func writeFileSync(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	return errors.Join(err, f.Close())
}

// walCommits reads the WAL file at path as SQLite's recovery would (see
// wal.Scan); a missing file has no header.
func walCommits(path string) (wal.Header, []uint32, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return wal.Header{}, nil, wal.ErrFormat
	}
	if err != nil {
		return wal.Header{}, nil, err
	}
	defer f.Close()
	return wal.Scan(bufio.NewReaderSize(f, 1<<20))
}
