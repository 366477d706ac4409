package dqlite

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/godqlite/dqlite/internal/faults"
)

// TestNode_Status: what Status says of a leader, a follower, a node not in
// the configuration yet, and a closed node, with a database that has
// frames in its WAL and a snapshot.
func TestNode_Status(t *testing.T) {
	ctx := context.Background()
	c := newCluster(t, 3)
	l := c.waitLeader()
	f := c.follower(l)
	mustExec(t, c.db(l, "s.db"), `CREATE TABLE t (x); INSERT INTO t VALUES (1)`)
	ls := c.nodes[l].Status()
	t.Logf("leader: %+v", ls)
	if ls.State != "Leader" || !ls.Ready || ls.Role != Voter || ls.LeaderID != ls.ID || len(ls.Members) != 3 ||
		ls.AppliedIndex == 0 || ls.CommitIndex < ls.AppliedIndex || ls.LastIndex < ls.CommitIndex {
		t.Errorf("leader's status: %+v", ls)
	}
	if len(ls.Databases) != 1 || ls.Databases[0].Name != "s.db" || ls.Databases[0].WALFrames == 0 ||
		ls.Databases[0].WALSize == 0 || ls.Databases[0].AppliedIndex == 0 || ls.Databases[0].Failed != "" {
		t.Errorf("leader's database status: %+v", ls.Databases)
	}
	if err := c.nodes[f].WaitApplied(ctx, ls.AppliedIndex); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the follower's lag to be 0", func() bool { return c.nodes[f].Status().Lag == 0 })
	fs := c.nodes[f].Status()
	t.Logf("follower: %+v", fs)
	if fs.State != "Follower" || fs.Ready || fs.Role != Voter || fs.LeaderID != ls.ID || fs.LeaderAddress != ls.Address ||
		len(fs.Databases) != 1 || fs.Databases[0].AppliedIndex != ls.Databases[0].AppliedIndex {
		t.Errorf("follower's status: %+v", fs)
	}
	if err := c.nodes[f].raft.Snapshot().Error(); err != nil {
		t.Fatal(err)
	}
	if fs := c.nodes[f].Status(); fs.SnapshotIndex == 0 || fs.Databases[0].SnapshotIndex != fs.Databases[0].AppliedIndex {
		t.Errorf("after a snapshot: %+v", fs)
	}
	i := c.addNode()
	if ns := c.nodes[i].Status(); ns.Role != "" || ns.Ready {
		t.Errorf("a node not added yet: %+v", ns)
	}
	c.stop(f)
	c.restart(f)
	c.stop(i)
	n := c.nodes[l]
	c.stop(l)
	if cs := n.Status(); cs.State != "Shutdown" || cs.Ready || len(cs.Databases) != 1 {
		t.Errorf("a closed node: %+v", cs)
	}
	c.nodes[l] = nil
	c.restart(l)
	c.check("s.db", `SELECT x FROM t`, nil)
}

// TestNode_StatusDatabaseLag: a follower whose disk refuses one
// database's WAL stops applying; its status counts, per database, the
// committed transactions it has not applied.
func TestNode_StatusDatabaseLag(t *testing.T) {
	c := newCluster(t, 3)
	l := c.waitLeader()
	f := c.follower(l)
	mustExec(t, c.db(l, "a.db"), `CREATE TABLE t (x)`)
	mustExec(t, c.db(l, "b.db"), `CREATE TABLE t (x)`)
	if err := c.nodes[f].WaitApplied(context.Background(), c.nodes[l].AppliedIndex()); err != nil {
		t.Fatal(err)
	}
	wal := filepath.Join(c.nodes[f].Dir(), "a.db-wal")
	faults.Set(wal, faults.Broken)
	defer faults.Set(wal, faults.None)
	o := newOutcome()
	for i := range int64(3) {
		mustExec(t, c.db(l, "a.db"), `INSERT INTO t VALUES (?)`, i)
		o.record(i, nil)
	}
	mustExec(t, c.db(l, "b.db"), `INSERT INTO t VALUES (1)`)
	var st Status
	waitFor(t, 10*time.Second, "the follower to know 4 transactions it has not applied", func() bool {
		st = c.nodes[f].Status()
		return st.Lag == 4
	})
	if len(st.Databases) != 2 || st.Databases[0].Lag != 3 || st.Databases[1].Lag != 1 {
		t.Errorf("per database lag: %+v", st.Databases)
	}
	faults.Set(wal, faults.None)
	waitFor(t, 10*time.Second, "the follower to catch up", func() bool {
		st = c.nodes[f].Status()
		return st.Lag == 0 && st.Databases[0].Lag == 0 && st.Databases[1].Lag == 0
	})
	c.check("a.db", `SELECT x FROM t`, o)
}
