package dqlite

import (
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	raftwal "github.com/hashicorp/raft-wal"
	"go.etcd.io/bbolt"
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
	switch {
	case cfg.LogStore == "wal" && boltErr == nil, cfg.LogStore == "bolt" && walErr == nil:
		return nil, fmt.Errorf("data dir %s holds a Raft log of another kind than LogStore %q", cfg.Dir, cfg.LogStore)
	case cfg.LogStore == "wal":
		if err := os.MkdirAll(walDir, 0o755); err != nil {
			return nil, err
		}
		w, err := raftwal.Open(walDir, raftwal.WithLogger(hlog))
		if err != nil {
			return nil, fmt.Errorf("open raft log %s: %w", walDir, err)
		}
		return w, nil
	}
	store, err := raftboltdb.New(raftboltdb.Options{Path: bolt, BoltOptions: &bbolt.Options{Timeout: time.Second}})
	if err != nil {
		return nil, fmt.Errorf("open raft log %s: %w", bolt, err)
	}
	return store, nil
}
