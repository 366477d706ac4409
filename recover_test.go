package dqlite

import (
	"context"
	"crypto/tls"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/godqlite/dqlite/internal/command"
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
	// The leader's log is the most recent of the two (Inspect says how an
	// operator tells).
	sl, err := Inspect(c.cfgs[l].Dir)
	if err != nil {
		t.Fatal(err)
	}
	so, err := Inspect(c.cfgs[s2].Dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("survivors: %+v and %+v", sl, so)
	if sl.LastTerm < so.LastTerm || sl.LastTerm == so.LastTerm && sl.LastIndex < so.LastIndex {
		t.Errorf("the old leader's log (%d, %d) is behind the other survivor's (%d, %d)", sl.LastTerm, sl.LastIndex, so.LastTerm, so.LastIndex)
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

// TestRecover_Refusals: Recover refuses more than two members, a member
// that was no voter, and, on a working TLS cluster, a call made without
// the cluster's TLS settings (whose status requests the nodes refuse: they
// accept connections, so they are up, and they are a quorum).
func TestRecover_Refusals(t *testing.T) {
	serverTLS, clientTLS := testTLS(t)
	nodeTLS := &tls.Config{Certificates: serverTLS.Certificates, RootCAs: clientTLS.RootCAs}
	c := newCluster(t, 3, func(cfg *Config) { cfg.TLS = nodeTLS })
	l := c.waitLeader()
	mustExec(t, c.db(l, "a.db"), `CREATE TABLE t (x)`)
	f := c.follower(l)
	c.stop(f)
	ctx := context.Background()
	self := Peer{ID: NodeID(f + 1), Address: c.cfgs[f].Address}
	for name, tc := range map[string]struct {
		cfg     Config
		members []Peer
		want    string
	}{
		"without TLS":   {Config{Dir: c.cfgs[f].Dir, Dial: c.cfgs[f].Dial}, []Peer{self}, "accepts connections but did not answer"},
		"with TLS":      {Config{Dir: c.cfgs[f].Dir, Dial: c.cfgs[f].Dial, TLS: nodeTLS}, []Peer{self}, "follows leader"},
		"three members": {Config{Dir: c.cfgs[f].Dir}, []Peer{self, {ID: 8, Address: "127.0.0.1:1"}, {ID: 9, Address: "127.0.0.1:2"}}, "at most two"},
		"a non-voter":   {Config{Dir: c.cfgs[f].Dir}, []Peer{self, {ID: 8, Address: "127.0.0.1:1"}}, "node 8 was no voter"},
	} {
		err := Recover(ctx, tc.cfg, tc.members)
		t.Logf("%s: %v", name, err)
		if !errors.Is(err, ErrNotRecoverable) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want ErrNotRecoverable saying %q", name, err, tc.want)
		}
	}
	c.restart(f)
	o := newOutcome()
	c.check("a.db", `SELECT rowid FROM t`, o)
}

// TestRecover_SkippedEntryAndInterruption: a log holding an entry that
// every node skips (a transaction built in an earlier term) is recovered;
// a node does not start from a directory whose recovery was interrupted
// (the mark Recover leaves while the files may hold uncommitted entries),
// and running Recover again completes it.
func TestRecover_SkippedEntryAndInterruption(t *testing.T) {
	c, o := oneRowStopped(t, func(c *cluster, l int) {
		// Node 1's log must hold the row's entry, which it then rewrites.
		if err := c.nodes[0].WaitApplied(context.Background(), c.nodes[l].AppliedIndex()); err != nil {
			t.Fatal(err)
		}
	})
	cfg := c.cfgs[0].withDefaults()
	store, err := openLogStore(cfg, newHclog(cfg.Logger))
	if err != nil {
		t.Fatal(err)
	}
	last, _ := store.LastIndex()
	var lastLog raft.Log
	store.GetLog(last, &lastLog)
	var fr *command.Frames
	for i := last; i > 0 && fr == nil; i-- {
		var e raft.Log
		if store.GetLog(i, &e) != nil || e.Type != raft.LogCommand {
			continue
		}
		if cmd, err := command.Decode(e.Data); err == nil {
			fr, _ = cmd.(*command.Frames)
		}
	}
	if fr == nil {
		t.Fatal("no Frames entry")
	}
	fr.Term = lastLog.Term - 1 // built by the leadership of an earlier term
	if err := store.StoreLog(&raft.Log{Index: last + 1, Term: lastLog.Term, Type: raft.LogCommand, Data: command.EncodeFrames(fr)}); err != nil {
		t.Fatal(err)
	}
	store.Close()
	st, err := Inspect(c.cfgs[0].Dir)
	if err != nil || st.ID != 1 || st.LastIndex != last+1 || len(st.Members) != 3 {
		t.Errorf("Inspect: %+v, %v; want node 1, last index %d, 3 members", st, err, last+1)
	}

	// An interrupted recovery: the mark is there (as Recover leaves it
	// while it applies), the log untouched.
	lock, err := lockDir(c.cfgs[0].Dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := writeLock(lock, 1, "1="+c.cfgs[0].Address); err != nil {
		t.Fatal(err)
	}
	lock.Close()
	if n, err := New(c.cfgs[0]); !errors.Is(err, ErrNeedsRecovery) || !strings.Contains(err.Error(), "interrupted") {
		if n != nil {
			n.Close()
		}
		t.Fatalf("New after an interrupted recovery: %v, want ErrNeedsRecovery", err)
	}
	members := []Peer{{ID: 1, Address: c.cfgs[0].Address}}
	if err := Recover(context.Background(), Config{Dir: c.cfgs[0].Dir, Dial: c.cfgs[0].Dial, Logger: testLogger(t)}, members); err != nil {
		t.Fatalf("Recover on a log holding an entry every node skips: %v", err)
	}
	c.restart(0)
	c.waitLeader()
	c.nodes = c.nodes[:1]
	c.check("a.db", `SELECT x FROM t`, o)
}
