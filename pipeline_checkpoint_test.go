package dqlite

import (
	"errors"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// An application's PRAGMA wal_checkpoint on the leader is refused: it
// would copy queued frames that Raft has not committed into the database
// file, where a transaction the cut removed from the WAL would survive.
// Found in review: a definitely failed insert stayed in the old leader's
// file, and reached every node when that node was elected again.
func TestPipeline_AppCheckpointCopiesQueuedFrames(t *testing.T) {
	c, l, db, h, armed := leaderWithOneRow(t)
	h.beforePropose = func() {
		if !armed.CompareAndSwap(true, false) {
			return
		}
		// INSERT 2 is queued, published, not proposed yet.
		var busy, logged, ckpted int
		if err := db.QueryRow(`PRAGMA wal_checkpoint(PASSIVE)`).Scan(&busy, &logged, &ckpted); errors.Is(err, ErrRefused) {
			t.Logf("wal_checkpoint refused: %v", err)
		} else if err != nil {
			t.Errorf("wal_checkpoint: %v", err)
		}
		t.Logf("application checkpoint with a transaction queued: busy=%d log=%d checkpointed=%d", busy, logged, ckpted)
		c.net.isolate(l)
		waitFor(t, 10*time.Second, "the leader to step down", func() bool {
			return c.nodes[l].raft.State() != raft.Leader
		})
	}
	_, err := db.Exec(`INSERT INTO t VALUES (2)`)
	t.Logf("the insert: %v", err)
	if !errors.Is(err, ErrNotLeader) {
		t.Fatalf("want a definite failure (ErrNotLeader), got %v", err)
	}
	c.net.heal()
	l2 := c.waitLeader()
	t.Logf("old leader node %d, new leader node %d", l+1, l2+1)
	mustExec(t, c.db(l2, "test.db"), `INSERT INTO t VALUES (3)`)
	waitFor(t, 10*time.Second, "the old leader to apply row 3", func() bool {
		var n int
		return c.db(l, "test.db").QueryRow(`SELECT count(*) FROM t WHERE id = 3`).Scan(&n) == nil && n == 1
	})
	// The old leader's own checkpoint, as it runs when its WAL is long.
	if err := c.nodes[l].fsm.Database("test.db").CheckpointNow(10 * time.Second); err != nil {
		t.Logf("checkpoint on the old leader: %v", err)
	}
	for i := range c.nodes {
		var n int
		if err := c.db(i, "test.db").QueryRow(`SELECT count(*) FROM t WHERE id = 2`).Scan(&n); err != nil {
			t.Errorf("node %d: %v", i+1, err)
		} else if n != 0 {
			t.Errorf("node %d holds row 2, whose commit failed with ErrNotLeader", i+1)
		}
	}
}
