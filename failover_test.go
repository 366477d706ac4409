package dqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

func TestCluster_FailoverNothingAcknowledgedLost(t *testing.T) {
	c := newCluster(t, 3)
	l := c.waitLeader()
	mustExec(t, c.db(l, "test.db"), `CREATE TABLE t (id INTEGER PRIMARY KEY, node INT, ts TEXT)`)
	nodes := slices.Clone(c.nodes)
	var dbs []*sql.DB // the writer's own copy: c.stop changes c.dbs
	for i := range nodes {
		dbs = append(dbs, c.db(i, "test.db"))
	}
	o := newOutcome()
	var next atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var stopOnce sync.Once
	halt := func() { stopOnce.Do(func() { close(stop) }); wg.Wait() }
	defer halt() // however the test ends, the writer stops first
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			leader := slices.IndexFunc(nodes, func(n *Node) bool { return n.IsLeader() })
			if leader < 0 {
				time.Sleep(5 * time.Millisecond)
				continue
			}
			id := next.Add(1)
			_, err := dbs[leader].Exec(`INSERT INTO t VALUES (?, ?, datetime('now'))`, id, leader+1)
			o.record(id, err)
		}
	}()
	acked := func(n int) func() bool {
		return func() bool { o.mu.Lock(); defer o.mu.Unlock(); return len(o.acked) >= n }
	}
	waitFor(t, 20*time.Second, "100 acknowledged writes", acked(100))
	c.stop(l)
	newLeader := c.waitLeader()
	if newLeader == l {
		t.Fatal("the closed node is still the leader")
	}
	waitFor(t, 20*time.Second, "writes to resume on the new leader", acked(300))
	halt()
	c.restart(l)
	t.Logf("acknowledged %d, failed %d, ambiguous %d", len(o.acked), len(o.failed), len(o.ambiguous))
	c.check("test.db", `SELECT id FROM t`, o)
}

// scenario describes one cell of the deposition matrix.
type scenario struct {
	at         string // "queued", "proposed", "appended" or "committed"
	quorum     bool   // a quorum remains without the deposed leader
	sameLeader bool   // the deposed leader is elected again
	k          int    // transactions in flight (one batch of the pipeline)
}

func TestCluster_DeposeLeaderMatrix(t *testing.T) {
	for _, k := range []int{1, 2, 8} {
		for _, at := range []string{"queued", "proposed", "appended", "committed"} {
			for _, quorum := range []bool{true, false} {
				for _, same := range []bool{true, false} {
					if k == 2 && same || at == "queued" && (k == 1 || same) {
						continue // k = 1 and 8 cover a re-elected leader; queued needs two
					}
					s := scenario{at, quorum, same, k}
					t.Run(fmt.Sprintf("k=%d/%s/quorum=%v/sameLeader=%v", k, at, quorum, same), func(t *testing.T) {
						runScenario(t, s)
					})
				}
			}
		}
	}
}

func runScenario(t *testing.T, s scenario) {
	h := &hooks{}
	c := newCluster(t, 3, func(cfg *Config) { cfg.hooks = h })
	l := c.waitLeader()
	db := c.db(l, "test.db")
	mustExec(t, db, `CREATE TABLE t (id INTEGER PRIMARY KEY, r INT)`)
	o := newOutcome()
	for id := int64(1); id <= 5; id++ {
		_, err := db.Exec(`INSERT INTO t VALUES (?, random())`, id)
		o.record(id, err)
	}

	// Depose the leader at the chosen point of the next commit.
	depose := func() {
		if s.quorum {
			c.net.isolate(l)
		} else {
			for i := range c.nodes {
				c.net.isolate(i)
			}
		}
	}
	var armed atomic.Bool
	armed.Store(true)
	once := func(f func()) func() {
		return func() {
			if armed.CompareAndSwap(true, false) {
				f()
			}
		}
	}
	release := make(chan struct{}) // "queued": the others start once the first is in flight
	switch s.at {
	case "queued":
		// One transaction in flight, in the leader's log alone; k-1 queued
		// behind it, never proposed.
		h.beforePropose = once(func() {
			close(release)
			d := c.nodes[l].fsm.Database("test.db")
			waitFor(t, 10*time.Second, fmt.Sprintf("%d transactions queued", s.k), func() bool { return d.Queued() >= s.k })
			depose()
		})
	case "proposed":
		// Leadership goes before the entry reaches the log.
		h.beforePropose = once(func() {
			depose()
			waitFor(t, 10*time.Second, "the leader to step down", func() bool {
				return c.nodes[l].raft.State() != raft.Leader
			})
		})
	case "appended":
		// The entry reaches the leader's log and no other.
		h.beforePropose = once(depose)
	case "committed":
		// Raft committed the entry; the commit frame is not written yet.
		h.afterCommit = once(depose)
	}

	// The k transactions go out as one batch: the proposer waits for them.
	var gathered atomic.Bool
	gathered.Store(true)
	h.beforeBatch = func(queued func() int) {
		if s.at != "queued" && gathered.CompareAndSwap(true, false) {
			waitFor(t, 10*time.Second, fmt.Sprintf("%d transactions queued", s.k), func() bool { return queued() >= s.k })
		}
	}
	conns := make([]*sql.Conn, s.k)
	for i := range conns {
		conn, err := db.Conn(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		conns[i] = conn
	}
	errs := make([]error, s.k)
	var wg sync.WaitGroup
	for i, conn := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if s.at == "queued" && i > 0 {
				<-release
			}
			tx, err := conn.BeginTx(context.Background(), nil)
			if err == nil {
				if _, err = tx.Exec(`INSERT INTO t VALUES (?, random())`, 100+i); err == nil {
					err = tx.Commit()
				} else {
					tx.Rollback()
				}
			}
			errs[i] = err
		}()
	}
	wg.Wait()
	var commitErr error
	for i, err := range errs {
		o.record(int64(100+i), err)
		switch {
		case s.at == "queued" && i == 0:
			if !errors.Is(err, ErrLeadershipLost) && !errors.Is(err, ErrNoQuorum) {
				t.Fatalf("commit in flight: got %v, want ErrLeadershipLost or ErrNoQuorum", err)
			}
		case s.at == "queued":
			if !errors.Is(err, ErrNotLeader) {
				t.Fatalf("commit %d, queued and never proposed: got %v, want ErrNotLeader (a definite failure)", i, err)
			}
		case s.at == "proposed":
			if !errors.Is(err, ErrNotLeader) {
				t.Fatalf("commit %d: got %v, want ErrNotLeader", i, err)
			}
		case s.at == "appended":
			if !errors.Is(err, ErrLeadershipLost) && !errors.Is(err, ErrNoQuorum) {
				t.Fatalf("commit %d: got %v, want ErrLeadershipLost or ErrNoQuorum", i, err)
			}
		case s.at == "committed":
			if err != nil {
				t.Fatalf("commit %d of a committed entry: %v", i, err)
			}
		}
		commitErr = err
		// No reader on the deposed leader sees a failed transaction.
		if err != nil {
			var n int
			if err := conns[i].QueryRowContext(context.Background(), `SELECT count(*) FROM t WHERE id = ?`, 100+i).Scan(&n); err != nil {
				t.Fatalf("connection unusable after the failed commit: %v", err)
			}
			if n != 0 {
				t.Fatal("the failed transaction is visible on the old leader")
			}
		}
	}

	// Elect a leader: another one first where a quorum allows it.
	if s.quorum {
		waitFor(t, 20*time.Second, "another leader", func() bool {
			for i, n := range c.nodes {
				if i != l && n.IsLeader() {
					return true
				}
			}
			return false
		})
	}
	c.net.heal()
	want := l
	if !s.sameLeader {
		want = (l + 1) % 3
	}
	c.transferLeadership(want)

	// Writes work again, on the same connection where it is the leader's.
	writer := c.db(want, "test.db")
	_, err := writer.Exec(`INSERT INTO t VALUES (200, random())`)
	o.record(200, err)
	if err != nil {
		t.Fatalf("write after recovery: %v", err)
	}
	c.check("test.db", `SELECT id FROM t`, o)
	present := ids(t, c.db(want, "test.db"), `SELECT id FROM t WHERE id >= 100 AND id < 200`)
	t.Logf("%d of %d transactions present after recovery (clients told %v)", len(present), s.k, commitErr)
}

// transferLeadership makes node want the ready leader, retrying while
// connections cut by a partition are being re-established.
func (c *cluster) transferLeadership(want int) {
	c.t.Helper()
	waitFor(c.t, 30*time.Second, fmt.Sprintf("node %d to lead", want+1), func() bool {
		nl := c.waitLeader()
		if nl == want {
			return true
		}
		err := c.nodes[nl].raft.LeadershipTransferToServer(
			raft.ServerID(fmt.Sprint(want+1)), raft.ServerAddress(c.nodes[want].Address())).Error()
		if err != nil {
			time.Sleep(50 * time.Millisecond)
		}
		return false
	})
}
