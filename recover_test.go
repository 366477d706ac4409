package dqlite

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestRecover_QuorumLoss: a 5-node cluster under load loses 3 nodes for
// good. Recover refuses while the cluster still works; once the 3 are
// gone it makes the 2 survivors a cluster of their own, which keeps every
// acknowledged write (the leader is a survivor, and it held them all),
// takes new writes, and grows again with 2 fresh nodes.
func TestRecover_QuorumLoss(t *testing.T) {
	c := newCluster(t, 5)
	l := c.waitLeader()
	s2 := c.follower(l)
	survivors := []int{l, s2}
	var dead []int
	for i := range 5 {
		if i != l && i != s2 {
			dead = append(dead, i)
		}
	}
	mustExec(t, c.db(l, "r.db"), `CREATE TABLE t (id INTEGER PRIMARY KEY, at TEXT, r INTEGER)`)

	// Refused while the cluster works: a stopped survivor's directory.
	c.stop(s2)
	members := []Peer{{ID: NodeID(l + 1), Address: c.cfgs[l].Address}, {ID: NodeID(s2 + 1), Address: c.cfgs[s2].Address}}
	err := Recover(context.Background(), Config{Dir: c.cfgs[s2].Dir, Dial: c.cfgs[s2].Dial}, members)
	if !errors.Is(err, ErrNotRecoverable) || !strings.Contains(err.Error(), "follows leader") {
		t.Fatalf("Recover on a healthy cluster: %v, want ErrNotRecoverable naming the leader", err)
	}
	t.Logf("refused: %v", err)
	// Refused while the node runs.
	if err := Recover(context.Background(), Config{Dir: c.cfgs[l].Dir, Dial: c.cfgs[l].Dial}, members); !errors.Is(err, ErrNotRecoverable) {
		t.Fatalf("Recover on a running node: %v, want ErrNotRecoverable", err)
	}
	c.restart(s2)

	// Load: writers on the leader and, forwarded, on the other survivor.
	o := newOutcome()
	var next atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range 4 {
		db := c.db(survivors[w%2], "r.db")
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				id := next.Add(1)
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
				_, err := db.ExecContext(ctx, `INSERT INTO t VALUES (?, datetime('now'), random())`, id)
				cancel()
				if errors.Is(err, context.DeadlineExceeded) {
					err = ErrNoQuorum // no answer: unknown outcome
				}
				o.record(id, err)
			}
		}()
	}
	waitFor(t, 30*time.Second, "300 acknowledged writes", func() bool {
		o.mu.Lock()
		defer o.mu.Unlock()
		return len(o.acked) >= 300
	})
	for _, i := range dead { // for good, while the writers write
		c.stop(i)
	}
	waitFor(t, 30*time.Second, "writes to fail without a quorum", func() bool {
		o.mu.Lock()
		defer o.mu.Unlock()
		return len(o.ambiguous)+len(o.failed) > 0
	})
	close(stop)
	wg.Wait()
	o.mu.Lock()
	t.Logf("before the loss: acknowledged %d, failed %d, unknown %d", len(o.acked), len(o.failed), len(o.ambiguous))
	o.mu.Unlock()

	for _, i := range survivors {
		c.stop(i)
	}
	for _, i := range survivors {
		if err := Recover(context.Background(), Config{Dir: c.cfgs[i].Dir, Dial: c.cfgs[i].Dial, Logger: testLogger(t)}, members); err != nil {
			t.Fatalf("recover node %d: %v", i+1, err)
		}
	}
	for _, i := range survivors {
		c.restart(i)
	}
	nl := c.waitLeader()
	if nl != l && nl != s2 {
		t.Fatalf("leader %d is no survivor", nl+1)
	}
	db := c.db(nl, "r.db")
	for id := int64(1_000_000); id < 1_000_010; id++ {
		_, err := db.Exec(`INSERT INTO t VALUES (?, datetime('now'), random())`, id)
		if err != nil {
			t.Fatalf("write after recovery: %v", err)
		}
		o.record(id, nil)
	}
	// Grow again with two fresh nodes.
	for range 2 {
		i := c.addNode()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		err := c.nodes[c.waitLeader()].AddVoter(ctx, c.nodes[i].ID(), c.nodes[i].Address())
		cancel()
		if err != nil {
			t.Fatalf("add node %d: %v", i+1, err)
		}
	}
	peers, err := c.nodes[c.waitLeader()].Members(context.Background())
	if err != nil || len(peers) != 4 {
		t.Fatalf("members after growing: %v, %v", peers, err)
	}
	c.check("r.db", `SELECT id FROM t`, o)
}

// TestNew_IDClash: a data directory records its node's ID; starting it as
// another node fails with ErrIDClash and changes nothing.
func TestNew_IDClash(t *testing.T) {
	c := newCluster(t, 1)
	cfg := c.cfgs[0]
	c.stop(0)
	other := cfg
	other.ID, other.Cluster = 2, nil
	if n, err := New(other); !errors.Is(err, ErrIDClash) {
		if n != nil {
			n.Close()
		}
		t.Fatalf("New as node 2 on node 1's directory: %v, want ErrIDClash", err)
	} else {
		t.Logf("%v", err)
	}
	c.restart(0) // still node 1's
	c.waitLeader()
}
