package dqlite

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"
)

// roles returns the members of each role, as the leader's configuration
// says, and the leader's index.
func (c *cluster) roles() (map[Role][]NodeID, int) {
	c.t.Helper()
	l := c.waitLeader()
	ms, err := c.nodes[l].Members(context.Background())
	if err != nil {
		return nil, l
	}
	out := map[Role][]NodeID{}
	for _, m := range ms {
		out[m.Role] = append(out[m.Role], m.ID)
	}
	return out, l
}

// waitRoles waits until the cluster has as many voters, standbys and
// spares as said, and every voter and standby is running, and returns
// the roles.
func (c *cluster) waitRoles(voters, standbys, spares int) map[Role][]NodeID {
	c.t.Helper()
	var r map[Role][]NodeID
	waitFor(c.t, 60*time.Second, fmt.Sprintf("%d voters, %d standbys, %d spares", voters, standbys, spares), func() bool {
		r, _ = c.roles()
		if len(r[Voter]) != voters || len(r[Standby]) != standbys || len(r[Spare]) != spares {
			return false
		}
		for _, id := range append(slices.Clone(r[Voter]), r[Standby]...) {
			if c.nodes[id-1] == nil {
				return false
			}
		}
		return true
	})
	c.t.Logf("roles: %v", r)
	return r
}

// join starts a new node and has the leader add it in role.
func (c *cluster) join(role Role) int {
	c.t.Helper()
	i := c.addNode()
	_, l := c.roles()
	if err := c.nodes[l].AddNode(context.Background(), c.nodes[i].ID(), c.nodes[i].Address(), role); err != nil {
		c.t.Fatalf("add node %d as a %s: %v", i+1, role, err)
	}
	return i
}

// write inserts rows [from, to) through the leader, recording them.
func (c *cluster) write(o *outcome, from, to int64) {
	c.t.Helper()
	for id := from; id < to; id++ {
		var err error
		for try := 0; try < 20; try++ {
			_, err = c.db(c.waitLeader(), "r.db").Exec(`INSERT INTO t (id) VALUES (?)`, id)
			if err == nil || !errors.Is(err, ErrNotLeader) && !errors.Is(err, ErrLeadershipLost) && !errors.Is(err, ErrClosed) {
				break
			}
		}
		if err != nil {
			c.t.Fatalf("insert %d: %v", id, err)
		}
		o.record(id, nil)
	}
}

// TestRoles_Assign: an operator adds standbys and spares and changes
// roles; a standby receives every database and does not vote, a spare
// receives nothing; bad requests are refused.
func TestRoles_Assign(t *testing.T) {
	ctx := context.Background()
	c := newCluster(t, 1)
	mustExec(t, c.db(0, "r.db"), `CREATE TABLE t (id INTEGER PRIMARY KEY)`)
	o := newOutcome()
	c.write(o, 1, 11)
	s, p := c.join(Standby), c.join(Spare)
	ld := c.nodes[0]
	if err := ld.AddNode(ctx, 9, "127.0.0.1:1", "observer"); err == nil || !strings.Contains(err.Error(), "unknown role") {
		t.Errorf("AddNode with an unknown role: %v", err)
	}
	if err := ld.Assign(ctx, 9, Voter); !errors.Is(err, ErrNoSuchNode) {
		t.Errorf("Assign of no member: %v", err)
	}
	if err := ld.Assign(ctx, ld.ID(), Standby); err == nil || !strings.Contains(err.Error(), "transfer leadership") {
		t.Errorf("Assign of the leader: %v", err)
	}
	if err := c.nodes[s].Assign(ctx, c.nodes[p].ID(), Voter); !errors.As(err, new(*NotLeaderError)) {
		t.Errorf("Assign on a follower: %v", err)
	}
	for _, addr := range []string{spareMark + c.nodes[s].Address(), "nohostport"} {
		if err := ld.AddNode(ctx, 9, addr, Standby); err == nil || !strings.Contains(err.Error(), "not host:port") {
			t.Errorf("AddNode at %q: %v", addr, err)
		}
	}
	if err := ld.TransferLeadership(ctx, c.nodes[s].ID()); err == nil || !strings.Contains(err.Error(), "only a voter") {
		t.Errorf("transfer to a standby: %v", err)
	}
	bad := Config{ID: 1, Address: "127.0.0.1:1", Dir: t.TempDir(), Roles: &RoleConfig{ProbeInterval: time.Nanosecond}}
	if err := bad.Validate(); err == nil || !strings.Contains(err.Error(), "ProbeInterval") {
		t.Errorf("a 1ns ProbeInterval: %v", err)
	}
	c.write(o, 11, 21)
	if err := c.nodes[s].WaitApplied(ctx, ld.AppliedIndex()); err != nil {
		t.Fatal(err)
	}
	if st := c.nodes[s].Status(); st.Role != Standby || len(st.Databases) != 1 {
		t.Errorf("the standby's status: %+v", st)
	}
	if c.nodes[p].fsm.Database("r.db") != nil || c.nodes[p].AppliedIndex() != 0 {
		t.Errorf("the spare received data: applied index %d", c.nodes[p].AppliedIndex())
	}
	st := ld.Status()
	want := fmt.Sprintf("[{1 %s voter} {2 %s standby} {3 %s spare}]", ld.Address(), c.nodes[s].Address(), c.nodes[p].Address())
	if fmt.Sprint(st.Members) != want {
		t.Errorf("members: %v, want %s", st.Members, want)
	}
	// One voter and a standby: the voter alone is the quorum, so the
	// standby's absence does not stop commits.
	c.stop(s)
	c.write(o, 21, 31)
	c.restart(s)

	// The spare becomes a standby (it receives the databases), then a
	// voter; the standby becomes a spare; a voter becomes a spare.
	if err := ld.Assign(ctx, c.nodes[p].ID(), Standby); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "the new standby to catch up", func() bool {
		return c.nodes[p].AppliedIndex() >= ld.AppliedIndex()
	})
	for _, step := range []struct {
		i    int
		role Role
	}{{p, Voter}, {s, Spare}, {s, Voter}, {s, Spare}} {
		if err := ld.Assign(ctx, c.nodes[step.i].ID(), step.role); err != nil {
			t.Fatalf("assign node %d %s: %v", step.i+1, step.role, err)
		}
		r, _ := c.roles()
		if !slices.Contains(r[step.role], c.nodes[step.i].ID()) {
			t.Errorf("after assigning node %d %s: %v", step.i+1, step.role, r)
		}
	}
	c.write(o, 31, 41)
	if err := ld.TransferLeadership(ctx, c.nodes[p].ID()); err != nil {
		t.Fatal(err)
	}
	c.write(o, 41, 51)
	c.check("r.db", `SELECT id FROM t`, o)
}

// TestRoles_Auto: with automatic role management, the leader keeps 3
// voters and 1 standby among 5 nodes added as spares; when a voter is
// killed, the standby replaces it and a spare becomes the standby; an
// operator's extra voter is demoted again; a node added later stays a
// spare; when the leader is killed, the next leader replaces it.
func TestRoles_Auto(t *testing.T) {
	ctx := context.Background()
	roles := &RoleConfig{Voters: 3, Standbys: 1, UnreachableAfter: 2 * time.Second, ProbeInterval: 100 * time.Millisecond}
	c := newCluster(t, 1, func(cfg *Config) { cfg.Roles = roles })
	mustExec(t, c.db(0, "r.db"), `CREATE TABLE t (id INTEGER PRIMARY KEY)`)
	o := newOutcome()
	c.write(o, 1, 11)
	for range 4 {
		c.join(Spare)
	}
	r := c.waitRoles(3, 1, 1)
	c.write(o, 11, 21)

	// Kill a voter that does not lead.
	_, l := c.roles()
	var v NodeID
	for _, id := range r[Voter] {
		if int(id-1) != l {
			v = id
			break
		}
	}
	standby, spare := r[Standby][0], r[Spare][0]
	c.stop(int(v - 1))
	c.write(o, 21, 31)
	r = c.waitRoles(3, 1, 1)
	if !slices.Contains(r[Voter], standby) || r[Standby][0] != spare || r[Spare][0] != v {
		t.Errorf("after node %d died: the standby %d should vote, the spare %d stand by: %v", v, standby, spare, r)
	}
	c.write(o, 31, 41)

	// It comes back, and stays a spare; the operator makes it a voter:
	// one voter too many, then one standby too many.
	c.restart(int(v - 1))
	_, l = c.roles()
	if err := c.nodes[l].Assign(ctx, v, Voter); err != nil {
		t.Fatal(err)
	}
	c.waitRoles(3, 1, 1)
	c.write(o, 41, 51)

	// A node added later stays a spare.
	c.join(Spare)
	c.waitRoles(3, 1, 2)

	// Kill the leader: the next one replaces it.
	_, l = c.roles()
	old := c.nodes[l].ID()
	c.stop(l)
	c.write(o, 51, 61)
	r = c.waitRoles(3, 1, 2)
	if !slices.Contains(r[Spare], old) {
		t.Errorf("the old leader %d should be a spare: %v", old, r)
	}
	c.write(o, 61, 71)
	c.check("r.db", `SELECT id FROM t`, o)
}

// TestRoles_NeverDemotesBelowQuorum: 5 voters, 2 of them down (but not
// for UnreachableAfter yet), 3 voters wanted: the 3 that answer are all a
// quorum has, so none is demoted, and writes go on. (Role management is
// turned on once the 2 are down: with all 5 up it would rightly make 2
// of them standbys.)
func TestRoles_NeverDemotesBelowQuorum(t *testing.T) {
	c := newCluster(t, 5)
	l := c.waitLeader()
	mustExec(t, c.db(l, "r.db"), `CREATE TABLE t (id INTEGER PRIMARY KEY)`)
	down := 0
	for i := range c.nodes {
		if i != l && down < 2 {
			c.stop(i)
			down++
		}
	}
	for i := range c.nodes {
		if c.nodes[i] != nil {
			c.stop(i)
			c.cfgs[i].Roles = &RoleConfig{Voters: 3, UnreachableAfter: time.Minute, ProbeInterval: 50 * time.Millisecond}
			c.restart(i)
		}
	}
	l = c.waitLeader()
	start := c.nodes[l].roleRounds.Load()
	waitFor(t, 30*time.Second, "20 rounds of role management", func() bool { return c.nodes[l].roleRounds.Load() >= start+20 })
	if r, _ := c.roles(); len(r[Voter]) != 5 {
		t.Errorf("roles after 20 rounds: %v", r)
	}
	o := newOutcome()
	c.write(o, 1, 11)
	c.check("r.db", `SELECT id FROM t`, o)
}

// TestRoles_PromotionKeepsQuorum: a standby whose Raft connections are cut
// still answers the manager's probe. When a voter dies, the manager makes
// it a spare first, and only then promotes the standby, with the two live
// voters a quorum of the three: commits go on although the new voter
// acknowledges nothing. (Promoting first would make four voters, whose
// quorum of three needs the unreachable one.)
func TestRoles_PromotionKeepsQuorum(t *testing.T) {
	ctx := context.Background()
	roles := &RoleConfig{Voters: 3, Standbys: 1, UnreachableAfter: 2 * time.Second, ProbeInterval: 100 * time.Millisecond}
	c := newCluster(t, 3, func(cfg *Config) { cfg.Roles = roles })
	l := c.waitLeader()
	mustExec(t, c.db(l, "r.db"), `CREATE TABLE t (id INTEGER PRIMARY KEY)`)
	s := c.join(Standby)
	if err := c.nodes[s].WaitApplied(ctx, c.nodes[l].AppliedIndex()); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		c.net.cutRaft(s, i)
	}
	v := (l + 1) % 3 // a voter that does not lead (not s, node 4)
	c.stop(v)
	o := newOutcome()
	c.write(o, 1, 6)
	waitFor(t, 30*time.Second, "the dead voter made a spare and the standby a voter", func() bool {
		r, _ := c.roles()
		return slices.Contains(r[Spare], NodeID(v+1)) && slices.Contains(r[Voter], NodeID(s+1))
	})
	c.write(o, 6, 11)
	c.net.heal()
	c.restart(v)
	c.check("r.db", `SELECT id FROM t`, o)
}
