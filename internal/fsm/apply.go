package fsm

import (
	"errors"
	"fmt"
	"time"

	"github.com/ncruces/go-sqlite3"

	"github.com/godqlite/dqlite/internal/command"
	"github.com/godqlite/dqlite/internal/crashpoint"
	"github.com/godqlite/dqlite/internal/errs"
	"github.com/godqlite/dqlite/internal/faults"
	"github.com/godqlite/dqlite/internal/vfs"
	"github.com/godqlite/dqlite/wal"
)

// lockWrite takes SQLite's WAL write lock on the apply connection, waiting
// as long as it takes: the holder is a local transaction that is being
// rolled back or a commit whose Raft future is failing, both of which end
// without the FSM. It logs while it waits, so a stuck node is visible.
func (d *DB) lockWrite() error {
	start := time.Now()
	for {
		if d.opts.stopping.Load() {
			return errs.ErrClosed
		}
		err := d.apply.Exec(`BEGIN IMMEDIATE`)
		if err == nil {
			return nil
		}
		if !errors.Is(err, sqlite3.BUSY) {
			return err
		}
		d.opts.Logger.Warn("waiting for the write lock to apply frames",
			"database", d.Name, "waited", time.Since(start).Round(time.Millisecond))
	}
}

// appendFrames is the follower path: it appends a transaction written by
// another node (or by this node in an earlier life) to the WAL and
// publishes it in the wal-index, holding SQLite's write lock, so readers
// see all of it or none of it.
func (d *DB) appendFrames(index uint64, pageSize, dbSize uint32, pages []command.Page) error {
	d.applyMu.Lock()
	defer d.applyMu.Unlock()
	if err := d.lockWrite(); err != nil {
		return fmt.Errorf("lock for apply: %w", err)
	}
	defer d.apply.Exec(`ROLLBACK`)

	w, err := d.beginAppend(pageSize)
	if err != nil {
		return err
	}
	for i := 0; i < len(pages); {
		// Write in batches of about 1 MiB to bound the buffer.
		n := max(1, (1<<20)/(wal.FrameHeaderSize+int(pageSize)))
		end := min(len(pages), i+n)
		commit := uint32(0)
		if end == len(pages) {
			commit = dbSize
		}
		if err := w.write(pages[i:end], commit); err != nil {
			return err
		}
		if end < len(pages) {
			crashpoint.Hit("apply-batch")
		}
		i = end
	}
	crashpoint.Hit("apply-written", d.Name, index)
	if err := w.finish(index, dbSize, "apply-recorded"); err != nil {
		return err
	}
	d.markDirty(pages)
	return nil
}

// finish records the transaction in the applied log and publishes it.
func (a *appender) finish(index uint64, dbSize uint32, point string) error {
	if err := a.d.record(a.max, a.walHdr.Salt, index); err != nil {
		return err
	}
	crashpoint.Hit(point, a.d.Name, index)
	if err := a.publish(dbSize); err != nil {
		return err
	}
	a.d.applied.Store(index)
	vfs.Committed(a.d.path, a.max, int(a.d.pageSize), a.walHdr.Salt, a.walHdr.BigEndian)
	return nil
}

// appender writes frames after the last committed frame of the WAL.
type appender struct {
	d      *DB
	index  *wal.Index
	hdr    wal.IndexHeader
	walHdr wal.Header
	last   uint32 // MaxFrame before this transaction
	max    uint32 // last frame written
	sum    wal.Checksum
	buf    []byte
}

func (d *DB) beginAppend(pageSize uint32) (*appender, error) {
	x := wal.NewIndex(d.shm)
	hdr, err := x.Header()
	if err != nil {
		return nil, fmt.Errorf("read wal-index: %w", err)
	}
	if hdr.MaxFrame > 0 {
		// Every frame is in the database file and no reader uses the WAL:
		// start it again from the top, as SQLite's writer would, so that a
		// follower's WAL stays as short as the leader's.
		back, err := x.Backfilled()
		if err == nil && back == hdr.MaxFrame && d.shm.tryLock(readLock1, readLocksAfter) {
			hdr.Salt = [2]uint32{hdr.Salt[0] + 1, randomSalt()}
			err = x.Restart(hdr)
			d.shm.unlock(readLock1, readLocksAfter)
			if err != nil {
				return nil, fmt.Errorf("restart wal: %w", err)
			}
			hdr.MaxFrame = 0
		}
	}
	a := &appender{d: d, index: x, hdr: hdr, last: hdr.MaxFrame, max: hdr.MaxFrame}
	if hdr.MaxFrame == 0 {
		// Start a new WAL, as SQLite's writer does after a checkpoint
		// restarted or truncated the log: new salts make stale frames
		// beyond the header invalid.
		var seq uint32
		var old [wal.HeaderSize]byte
		if n, _ := d.walf.ReadAt(old[:], 0); n == len(old) {
			if h, err := wal.DecodeHeader(old[:]); err == nil {
				seq = h.CheckpointSeq + 1
			}
		}
		a.walHdr = wal.NewHeader(pageSize, seq, [2]uint32{hdr.Salt[0] + 1, randomSalt()})
		if err := faults.Write(d.walf.Name(), 0, wal.HeaderSize, d.walSize); err != nil {
			return nil, fmt.Errorf("write wal header: %w", err)
		}
		if _, err := d.walf.WriteAt(a.walHdr.Encode(), 0); err != nil {
			return nil, fmt.Errorf("write wal header: %w", err)
		}
		a.sum = a.walHdr.Checksum
		a.hdr.BigEndian = a.walHdr.BigEndian
		a.hdr.Salt = a.walHdr.Salt
	} else {
		if hdr.PageSize != pageSize {
			return nil, fmt.Errorf("wal page size %d, transaction page size %d", hdr.PageSize, pageSize)
		}
		a.walHdr = wal.Header{BigEndian: hdr.BigEndian, PageSize: pageSize, Salt: hdr.Salt}
		a.sum = hdr.FrameChecksum
	}
	a.hdr.PageSize = pageSize
	return a, nil
}

// write appends pages as frames; commit is the database size if the last
// of them ends the transaction.
func (a *appender) write(pages []command.Page, commit uint32) error {
	fs := wal.FrameHeaderSize + int(a.walHdr.PageSize)
	a.buf = a.buf[:0]
	first := a.max + 1
	for i, p := range pages {
		dbSize := uint32(0)
		if i == len(pages)-1 {
			dbSize = commit
		}
		a.buf = append(a.buf, make([]byte, fs)...)
		a.sum = wal.EncodeFrame(a.buf[i*fs:], a.walHdr, a.sum, p.No, dbSize, p.Data)
	}
	off := wal.FrameOffset(first, int(a.walHdr.PageSize))
	if err := faults.Write(a.d.walf.Name(), off, int64(len(a.buf)), a.d.walSize); err != nil {
		return fmt.Errorf("write frames: %w", err)
	}
	if _, err := a.d.walf.WriteAt(a.buf, off); err != nil {
		return fmt.Errorf("write frames: %w", err)
	}
	for i, p := range pages {
		if err := a.index.Append(first+uint32(i), p.No, a.last); err != nil {
			return fmt.Errorf("index frame: %w", err)
		}
	}
	a.max += uint32(len(pages))
	return nil
}

func (a *appender) publish(dbSize uint32) error {
	h := a.hdr
	h.Change++
	h.MaxFrame = a.max
	h.DBSize = dbSize
	h.FrameChecksum = a.sum
	return a.index.Publish(h)
}

// maybeCheckpoint copies the WAL into the database file and truncates it
// once it holds CheckpointFrames frames. It never waits: if a reader or a
// writer is in the way, or a snapshot is being persisted, it tries again
// after a later commit.
func (d *DB) maybeCheckpoint() {
	if d.opts.CheckpointFrames == 0 {
		return
	}
	x := wal.NewIndex(d.shm)
	hdr, err := x.Header()
	if err != nil || hdr.MaxFrame < d.opts.CheckpointFrames {
		return
	}
	backfilled, _ := x.Backfilled()
	if !d.ckptMu.TryLock() {
		return
	}
	defer d.ckptMu.Unlock()
	if !d.holdCommits() {
		return
	}
	defer d.releaseCommits()
	d.apply.BusyTimeout(0)
	defer d.apply.BusyTimeout(time.Second)
	crashpoint.Hit("checkpoint-start")
	during := crashpoint.During("checkpoint-backfill", d.path)
	start := time.Now()
	_, _, err = d.apply.WALCheckpoint("main", sqlite3.CHECKPOINT_TRUNCATE)
	during()
	switch {
	case err == nil:
		d.opts.Metrics.Checkpoint(time.Since(start), int(hdr.MaxFrame-min(backfilled, hdr.MaxFrame)))
	case !errors.Is(err, sqlite3.BUSY):
		d.opts.Logger.Warn("checkpoint failed", "database", d.Name, "err", err)
	}
}

// Checkpoint runs maybeCheckpoint for a local commit (the leader's path).
func (d *DB) Checkpoint() {
	if d.applyMu.TryLock() {
		d.maybeCheckpoint()
		d.applyMu.Unlock()
	}
}

// walSize is the WAL file's size, for the fault layer.
func (d *DB) walSize() (int64, error) {
	fi, err := d.walf.Stat()
	if err != nil {
		return 0, err
	}
	return fi.Size(), nil
}
