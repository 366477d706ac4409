package dqlite

import (
	"errors"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// walBound is the most a WAL grows to under a continuous write load with
// the default CheckpointFrames (1000): see Config.CheckpointFrames.
func walBound(pageSize, frames int) int64 {
	return int64(4*frames) * int64(pageSize+24)
}

func TestCluster_CheckpointsBoundWAL(t *testing.T) {
	if testing.Short() {
		t.Skip("commits 20k transactions")
	}
	if raceEnabled {
		t.Skip("measures a size bound, which the run without -race checks; the race detector slows commits tenfold")
	}
	txs := 20000 // 20 times CheckpointFrames
	c := newCluster(t, 3)
	l := c.waitLeader()
	db := c.db(l, "test.db")
	leaderChanges := 0
	mustExec(t, db, `CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT, r INT)`)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var stopOnce sync.Once
	halt := func() { stopOnce.Do(func() { close(stop) }); wg.Wait() }
	defer halt() // however the test ends, readers and sampler stop first
	var maxWAL [3]atomic.Int64
	var reads atomic.Int64
	// Readers on every node keep snapshots open now and then; a sampler
	// records each node's largest WAL file.
	for i := range c.nodes {
		rdb := c.db(i, "test.db")
		path := c.nodes[i].fsm.Database("test.db").Path() + "-wal"
		wg.Add(2)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				var n int
				if err := rdb.QueryRow(`SELECT count(*) FROM t`).Scan(&n); err == nil {
					reads.Add(1)
				}
				time.Sleep(time.Millisecond)
			}
		}()
		go func() {
			defer wg.Done()
			tick := time.NewTicker(20 * time.Millisecond)
			defer tick.Stop()
			for {
				if st, err := os.Stat(path); err == nil && st.Size() > maxWAL[i].Load() {
					maxWAL[i].Store(st.Size())
				}
				select {
				case <-stop:
					return
				case <-tick.C:
				}
			}
		}()
	}
	o := newOutcome()
	start := time.Now()
	for id := int64(1); id <= int64(txs); id++ {
		_, err := db.Exec(`INSERT INTO t VALUES (?, 'v', random())`, id)
		o.record(id, err)
		if err != nil {
			// On a loaded machine a leader may miss its lease: what
			// this test measures goes on with the next leader.
			if !errors.Is(err, ErrLeadershipLost) && !errors.Is(err, ErrNoQuorum) && !errors.Is(err, ErrNotLeader) {
				t.Fatalf("insert %d: %v", id, err)
			}
			leaderChanges++
			db = c.db(c.waitLeader(), "test.db")
		}
	}
	elapsed := time.Since(start)
	halt()
	bound := walBound(DefaultConfig().PageSize, DefaultConfig().CheckpointFrames)
	for i := range c.nodes {
		t.Logf("node %d: largest WAL %d bytes (bound %d)", i+1, maxWAL[i].Load(), bound)
		if maxWAL[i].Load() > bound {
			t.Errorf("node %d: WAL reached %d bytes, over the bound of %d", i+1, maxWAL[i].Load(), bound)
		}
	}
	t.Logf("%d transactions in %v (%.0f tx/s), %d reads, %d leader changes", txs, elapsed.Round(time.Millisecond),
		float64(txs)/elapsed.Seconds(), reads.Load(), leaderChanges)
	c.check("test.db", `SELECT id FROM t`, o)
}
