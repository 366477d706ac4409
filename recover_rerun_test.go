package dqlite

import (
	"context"
	"testing"
)

// The tests below leave a directory as Recover killed at one of its steps
// leaves it (its mark in the lock file; the log emptied or not), run
// Recover again, start the nodes and check the cluster.

// oneRowStopped starts 3 nodes, commits a row to a.db, runs before (if
// given) and stops every node; the outcome has the row acknowledged.
func oneRowStopped(t *testing.T, before func(c *cluster, l int)) (*cluster, *outcome) {
	t.Helper()
	c := newCluster(t, 3)
	l := c.waitLeader()
	mustExec(t, c.db(l, "a.db"), `CREATE TABLE t (x); INSERT INTO t VALUES (1)`)
	o := newOutcome()
	o.record(1, nil)
	if before != nil {
		before(c, l)
	}
	for i := range c.nodes {
		c.stop(i)
	}
	return c, o
}

// interrupt marks dir as a recovery for members under way.
func interrupt(t *testing.T, dir string, id NodeID, members []Peer) {
	t.Helper()
	lock, err := lockDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	if err := writeLock(lock, id, memberList(members)); err != nil {
		t.Fatal(err)
	}
}

func recoverNode(t *testing.T, c *cluster, i int, members []Peer) error {
	t.Helper()
	return Recover(context.Background(), Config{Dir: c.cfgs[i].Dir, Dial: c.cfgs[i].Dial, Logger: testLogger(t)}, members)
}

// TestRecover_RerunAfterLogEmptied: killed after the log was emptied, before
// the mark was removed; the new membership is then the directory's own.
func TestRecover_RerunAfterLogEmptied(t *testing.T) {
	c, o := oneRowStopped(t, nil)
	c.nodes = c.nodes[:1]
	members := []Peer{{ID: 1, Address: c.cfgs[0].Address}}
	if err := recoverNode(t, c, 0, members); err != nil {
		t.Fatal(err)
	}
	interrupt(t, c.cfgs[0].Dir, 1, members)
	if err := recoverNode(t, c, 0, []Peer{{ID: 1, Address: "127.0.0.1:1"}}); err == nil {
		t.Errorf("resuming with other members than the interrupted recovery's succeeded")
	}
	if err := recoverNode(t, c, 0, members); err != nil {
		t.Fatalf("re-running Recover: %v", err)
	}
	c.restart(0)
	c.waitLeader()
	c.check("a.db", `SELECT x FROM t`, o)
}

// TestRecover_NothingAfterSnapshot: a log with no entry after the latest
// snapshot (a quiet cluster that just took one).
func TestRecover_NothingAfterSnapshot(t *testing.T) {
	c, o := oneRowStopped(t, func(c *cluster, l int) {
		if err := c.nodes[0].WaitApplied(context.Background(), c.nodes[l].AppliedIndex()); err != nil {
			t.Fatal(err)
		}
		if err := c.nodes[0].raft.Snapshot().Error(); err != nil {
			t.Fatal(err)
		}
	})
	c.nodes = c.nodes[:1]
	if err := recoverNode(t, c, 0, []Peer{{ID: 1, Address: c.cfgs[0].Address}}); err != nil {
		t.Fatalf("Recover: %v", err)
	}
	c.restart(0)
	c.waitLeader()
	c.check("a.db", `SELECT x FROM t`, o)
}

// TestRecover_RerunWithPeerStarted: two survivors; node 1's recovery is
// interrupted (after it completed, or right after its mark, its log
// untouched) while node 2 was recovered and started: the other survivor,
// now up, must not make the re-run refuse.
func TestRecover_RerunWithPeerStarted(t *testing.T) {
	for _, completed := range []bool{true, false} {
		c, o := oneRowStopped(t, nil)
		c.nodes = c.nodes[:2]
		members := []Peer{{ID: 1, Address: c.cfgs[0].Address}, {ID: 2, Address: c.cfgs[1].Address}}
		if completed {
			if err := recoverNode(t, c, 0, members); err != nil {
				t.Fatal(err)
			}
		}
		interrupt(t, c.cfgs[0].Dir, 1, members)
		if err := recoverNode(t, c, 1, members); err != nil {
			t.Fatal(err)
		}
		c.restart(1)
		if err := recoverNode(t, c, 0, members); err != nil {
			t.Fatalf("re-run with node 2 up (first run completed: %v): %v", completed, err)
		}
		c.restart(0)
		c.waitLeader()
		c.check("a.db", `SELECT x FROM t`, o)
		c.close()
	}
}
