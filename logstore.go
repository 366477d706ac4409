package dqlite

import (
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	raftwal "github.com/hashicorp/raft-wal"
	walfs "github.com/hashicorp/raft-wal/fs"
	"github.com/hashicorp/raft-wal/segment"
	"github.com/hashicorp/raft-wal/types"
	"go.etcd.io/bbolt"

	"github.com/godqlite/dqlite/internal/faults"
)

// logStore is Raft's log and stable store.
type logStore interface {
	raft.LogStore
	raft.StableStore
	Close() error
}

// lockDir takes an exclusive lock on the data directory, or fails at once
// with ErrDirInUse.
func lockDir(dir string) (*os.File, error) {
	f, err := os.OpenFile(filepath.Join(dir, "lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("lock data dir: %w", err)
	}
	if err := tryLockFile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("%w: %s", ErrDirInUse, dir)
	}
	return f, nil
}

func openLogStore(cfg Config, hlog hclog.Logger) (logStore, error) {
	bolt := filepath.Join(cfg.Dir, "raft.db")
	walDir := filepath.Join(cfg.Dir, "raft-wal")
	_, boltErr := os.Stat(bolt)
	_, walErr := os.Stat(walDir)
	if cfg.LogStore == "" {
		cfg.LogStore = "wal"
		if boltErr == nil {
			cfg.LogStore = "bolt"
		}
	}
	switch {
	case cfg.LogStore == "wal" && boltErr == nil, cfg.LogStore == "bolt" && walErr == nil:
		return nil, fmt.Errorf("data dir %s holds a Raft log of another kind than LogStore %q", cfg.Dir, cfg.LogStore)
	case cfg.LogStore == "wal":
		if err := os.MkdirAll(walDir, 0o755); err != nil {
			return nil, err
		}
		w, err := raftwal.Open(walDir, raftwal.WithLogger(hlog),
			raftwal.WithSegmentFiler(segment.NewFiler(walDir, faultVFS{walfs.New()})))
		if err != nil {
			return nil, fmt.Errorf("open raft log %s: %w", walDir, err)
		}
		return &gapless{logStore: w}, nil
	}
	// Without the free list written at every commit (it is rebuilt when
	// the file opens, which MaxLogBytes keeps small), a commit writes a few
	// pages instead of a list that grows with the file.
	store, err := raftboltdb.New(raftboltdb.Options{Path: bolt, BoltOptions: &bbolt.Options{
		Timeout: time.Second, NoFreelistSync: true, FreelistType: bbolt.FreelistMapType}})
	if err != nil {
		return nil, fmt.Errorf("open raft log %s: %w", bolt, err)
	}
	return store, nil
}

// gapless is raft-wal as a log store that takes a gap, as BoltDB does, and
// does not tell Raft it cannot (raft.MonotonicLogStore). Raft then installs
// a snapshot on a follower the way it does over BoltDB: it deletes the log
// up to the snapshot and keeps the entries after it. Over a monotonic
// store, hashicorp/raft v1.7.3 deletes the whole log but goes on believing
// it holds the entries after the snapshot, and a follower whose log ran
// ahead of the snapshot it received panics ("log not found") at its next
// commit (hashicorp/raft#697; the fault-injection suite hit it on a node
// added under load). The only gap Raft makes is the first append after a
// snapshot beyond the end of the log: the entries before it are then
// deleted, since raft-wal keeps one contiguous range.
//
// It also retries an append that follows a truncation of the log's end
// until the disk takes it. hashicorp/raft v1.7.3 does not update its idea
// of the last entry when a follower's append fails after it cleared a
// conflicting suffix (a TODO in appendEntries), and then panics ("log not
// found") at the next commit: the fault-injection suite hit it with a
// follower's fsyncs failing. The follower stops taking part until its disk
// is back, as its FSM does (DESIGN.md, "A disk that refuses writes").
type gapless struct {
	logStore
	truncated atomic.Bool // the end of the log was cut, and nothing appended since
	stopped   atomic.Bool // the node is closing: give up
}

// stop ends the retries: the node is closing.
func (g *gapless) stop() { g.stopped.Store(true) }

func (g *gapless) DeleteRange(min, max uint64) error {
	last, err := g.logStore.LastIndex()
	if err != nil {
		return err
	}
	if err := g.logStore.DeleteRange(min, max); err != nil {
		return err // Raft leaves its last index alone and tries again
	}
	if max >= last {
		g.truncated.Store(true) // the append that follows must not fail
	}
	return nil
}

func (g *gapless) StoreLog(l *raft.Log) error { return g.StoreLogs([]*raft.Log{l}) }

func (g *gapless) StoreLogs(logs []*raft.Log) error {
	err := g.storeLogs(logs)
	for attempt := 1; err != nil && g.truncated.Load() && !g.stopped.Load(); attempt++ {
		time.Sleep(min(time.Duration(attempt)*10*time.Millisecond, 200*time.Millisecond))
		err = g.storeLogs(logs)
	}
	if err == nil {
		g.truncated.Store(false)
	}
	return err
}

func (g *gapless) storeLogs(logs []*raft.Log) error {
	if len(logs) > 0 {
		last, err := g.LastIndex()
		if err != nil {
			return err
		}
		if last > 0 && logs[0].Index > last+1 {
			first, err := g.FirstIndex()
			if err != nil {
				return err
			}
			if err := g.DeleteRange(first, last); err != nil {
				return fmt.Errorf("clear the log before entry %d: %w", logs[0].Index, err)
			}
		}
	}
	return g.logStore.StoreLogs(logs)
}

// faultVFS is raft-wal's file layer with the fault layer before every
// write, fsync and file creation (see internal/faults).
type faultVFS struct{ types.VFS }

func (v faultVFS) Create(dir, name string, size uint64) (types.WritableFile, error) {
	if err := faults.Create(filepath.Join(dir, name)); err != nil {
		return nil, err
	}
	f, err := v.VFS.Create(dir, name, size)
	if err != nil {
		return nil, err
	}
	return faultFile{f, filepath.Join(dir, name)}, nil
}

func (v faultVFS) OpenWriter(dir, name string) (types.WritableFile, error) {
	f, err := v.VFS.OpenWriter(dir, name)
	if err != nil {
		return nil, err
	}
	return faultFile{f, filepath.Join(dir, name)}, nil
}

type faultFile struct {
	types.WritableFile
	path string
}

func (f faultFile) WriteAt(p []byte, off int64) (int, error) {
	if err := faults.Write(f.path, off, int64(len(p)), f.size); err != nil {
		return 0, err
	}
	return f.WritableFile.WriteAt(p, off)
}

func (f faultFile) Sync() error {
	if err := faults.Sync(f.path); err != nil {
		return err
	}
	return f.WritableFile.Sync()
}

func (f faultFile) size() (int64, error) {
	fi, err := os.Stat(f.path)
	if err != nil {
		return 0, err
	}
	return fi.Size(), nil
}
