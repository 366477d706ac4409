package dqlite

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// A read-write transaction (BEGIN IMMEDIATE on the leader) that only reads
// sees the queued transactions of other connections (it holds the write
// lock: no Fence), and its Commit writes no frame. That Commit must wait
// for them and fail if one is cut. Found in review: it reported success
// at once, for a transaction that had read a write that then failed.
func TestPipeline_ReadWriteTxWithoutWritesSeesCutTx(t *testing.T) {
	c, l, db, h, armed := leaderWithOneRow(t)
	var seen int
	var commitErr error
	committed := make(chan struct{})
	h.beforePropose = func() {
		if !armed.CompareAndSwap(true, false) {
			return
		}
		// INSERT 2 is queued, published, not proposed yet. The read-write
		// transaction runs beside the proposer (a fixed Commit waits for
		// INSERT 2, which waits for this hook).
		read := make(chan struct{})
		go func() {
			defer close(committed)
			tx, err := db.BeginTx(context.Background(), nil)
			if err != nil {
				close(read)
				commitErr = err
				return
			}
			if err := tx.QueryRow(`SELECT count(*) FROM t`).Scan(&seen); err != nil {
				t.Errorf("read: %v", err)
			}
			close(read)
			commitErr = tx.Commit()
		}()
		<-read
		select {
		case <-committed:
		case <-time.After(200 * time.Millisecond):
		}
		c.net.isolate(l)
		waitFor(t, 10*time.Second, "the leader to step down", func() bool {
			return c.nodes[l].raft.State() != raft.Leader
		})
	}
	_, err := db.Exec(`INSERT INTO t VALUES (2)`)
	if !errors.Is(err, ErrNotLeader) {
		t.Fatalf("want a definite failure (ErrNotLeader), got %v", err)
	}
	<-committed
	t.Logf("INSERT 2: %v; the read-write transaction read %d rows and its Commit returned %v", err, seen, commitErr)
	if seen == 2 && commitErr == nil {
		t.Fatal("a transaction that read a row whose commit then failed was reported committed")
	}
}
