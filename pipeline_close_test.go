package dqlite

import (
	"errors"
	"sync"
	"testing"
	"time"
)

// Close with transactions queued (the leader cut off from the others, so
// none can commit): every commit returns, none acknowledged, and the node
// restarts and converges with the others, its files identical.
func TestPipeline_CloseWithQueuedTransactions(t *testing.T) {
	// The cut-off leader keeps its lease until Close.
	c := newCluster(t, 3, func(cfg *Config) {
		cfg.HeartbeatTimeout, cfg.ElectionTimeout, cfg.LeaderLeaseTimeout = 3*time.Second, 3*time.Second, 2500*time.Millisecond
		cfg.ApplyTimeout = 10 * time.Second
	})
	l := c.waitLeader()
	db := c.db(l, "test.db")
	mustExec(t, db, `CREATE TABLE t (id INTEGER PRIMARY KEY)`)
	o := newOutcome()
	_, err := db.Exec(`INSERT INTO t VALUES (1)`)
	o.record(1, err)
	d := c.nodes[l].fsm.Database("test.db")
	c.net.isolate(l)
	db.SetMaxOpenConns(5)
	errs := make([]error, 4)
	var wg sync.WaitGroup
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = db.Exec(`INSERT INTO t VALUES (?)`, 10+i)
		}()
	}
	waitFor(t, 10*time.Second, "4 transactions queued", func() bool { return d.Queued() >= 4 })
	closed := make(chan struct{})
	go func() {
		defer close(closed)
		c.stop(l)
	}()
	select {
	case <-closed:
	case <-time.After(20 * time.Second):
		t.Fatal("Close did not return with transactions queued")
	}
	wg.Wait()
	for i, err := range errs {
		o.record(int64(10+i), err)
		if err == nil {
			t.Fatalf("commit %d acknowledged by a leader cut off from the others", i)
		}
		if !errors.Is(err, ErrClosed) && !errors.Is(err, ErrLeadershipLost) && !errors.Is(err, ErrNoQuorum) && !errors.Is(err, ErrNotLeader) {
			t.Fatalf("commit %d: %v, want ErrClosed, ErrLeadershipLost, ErrNoQuorum or ErrNotLeader", i, err)
		}
	}
	c.net.heal()
	c.restart(l)
	_, err = c.db(c.waitLeader(), "test.db").Exec(`INSERT INTO t VALUES (2)`)
	o.record(2, err)
	c.check("test.db", `SELECT id FROM t`, o)
}
