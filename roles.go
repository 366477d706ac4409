package dqlite

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/raft"

	"github.com/godqlite/dqlite/driver"
)

// Spare: a member that holds no data and takes no part in Raft; the
// cluster knows its address, so it can become a standby (then a voter)
// when one is needed.
const Spare Role = "spare"

// A spare is a Raft non-voter whose address carries spareMark: the stream
// layer refuses to dial such an address, so the leader sends it nothing,
// and the configuration, which Raft keeps in its log and snapshots,
// remembers it on every node.
const spareMark = "spare:"

// errSpare is the stream layer's answer to a dial of a spare.
var errSpare = errors.New("dqlite: the node is a spare: nothing is sent to it")

// memberOf returns a configuration entry as a Member.
func memberOf(s raft.Server) Member {
	m := Member{ID: nodeID(s.ID), Address: string(s.Address), Role: Voter}
	switch {
	case s.Suffrage == raft.Voter:
	case strings.HasPrefix(m.Address, spareMark):
		m.Role, m.Address = Spare, strings.TrimPrefix(m.Address, spareMark)
	default:
		m.Role = Standby
	}
	return m
}

// roleChange checks a change to role on this node, and returns the
// members.
func (n *Node) roleChange(ctx context.Context, role Role) ([]Peer, error) {
	if err := checkRole(role); err != nil {
		return nil, err
	}
	if err := n.checkMembershipLeader(); err != nil {
		return nil, err
	}
	return n.Members(ctx)
}

// checkAddress refuses what is no host:port, the spare mark included.
func checkAddress(address string) error {
	if _, _, err := net.SplitHostPort(address); err != nil || strings.HasPrefix(address, spareMark) {
		return fmt.Errorf("dqlite: address %q is not host:port", address)
	}
	return nil
}

func checkRole(r Role) error {
	switch r {
	case Voter, Standby, Spare:
		return nil
	}
	return fmt.Errorf("dqlite: unknown role %q (voter, standby or spare)", r)
}

// AddNode adds node id, listening at address, in role: a voter (as
// AddVoter), a standby (it receives every database, and votes on nothing)
// or a spare (it receives nothing; it can be assigned another role later).
// The node must have been started on an empty data directory without
// Config.Cluster. Adding a member that is already there with the same
// address does nothing (Assign changes its role).
func (n *Node) AddNode(ctx context.Context, id NodeID, address string, role Role) error {
	if id == 0 || address == "" {
		return fmt.Errorf("dqlite: adding a node needs a non-zero ID and an address")
	}
	if err := checkAddress(address); err != nil {
		return err
	}
	members, err := n.roleChange(ctx, role)
	if err != nil {
		return err
	}
	for _, p := range members {
		switch {
		case p.ID == id && p.Address == address:
			return nil
		case p.ID == id:
			return fmt.Errorf("%w: node %d is at %s", ErrNodeExists, id, p.Address)
		case p.Address == address:
			return fmt.Errorf("%w: %s is node %d", ErrNodeExists, address, p.ID)
		}
	}
	var f raft.Future
	switch role {
	case Voter:
		f = n.raft.AddVoter(serverID(id), raft.ServerAddress(address), 0, timeoutOf(ctx))
	case Standby:
		f = n.raft.AddNonvoter(serverID(id), raft.ServerAddress(address), 0, timeoutOf(ctx))
	case Spare:
		f = n.raft.AddNonvoter(serverID(id), raft.ServerAddress(spareMark+address), 0, timeoutOf(ctx))
	}
	return n.mapMembershipErr(waitFuture(ctx, f))
}

// Assign gives member id another role. A spare made a voter receives the
// databases first as any new voter does: until it has caught up, it
// counts towards the quorum without acknowledging, so prefer making it a
// standby, then a voter (automatic role management does). The leader
// cannot be assigned another role: transfer leadership first.
//
// A move to or from spare is several configuration changes, the member
// removed and added again (Raft cannot change a member's address in
// place safely); should the last fail (no quorum, leadership lost), the
// node is no member any more: add it again.
func (n *Node) Assign(ctx context.Context, id NodeID, role Role) error {
	members, err := n.roleChange(ctx, role)
	if err != nil {
		return err
	}
	i := slices.IndexFunc(members, func(p Peer) bool { return p.ID == id })
	if i < 0 {
		return fmt.Errorf("%w: %d", ErrNoSuchNode, id)
	}
	p := members[i]
	if p.Role == role {
		return nil
	}
	if id == n.cfg.ID {
		return fmt.Errorf("dqlite: node %d leads: transfer leadership before assigning it the role %s", id, role)
	}
	sid, addr, t := serverID(id), raft.ServerAddress(p.Address), timeoutOf(ctx)
	// A spare's Raft address differs from its address as a standby or
	// voter. Raft changes a member's address in place racily (its
	// replication goroutine reads the peer it replaces without a lock), so
	// a move to or from spare removes the member and adds it again.
	demote := func() raft.Future { return n.raft.DemoteVoter(sid, 0, t) }
	remove := func() raft.Future { return n.raft.RemoveServer(sid, 0, t) }
	addVoter := func() raft.Future { return n.raft.AddVoter(sid, addr, 0, t) }
	addStandby := func() raft.Future { return n.raft.AddNonvoter(sid, addr, 0, t) }
	addSpare := func() raft.Future { return n.raft.AddNonvoter(sid, spareMark+addr, 0, t) }
	var steps []func() raft.Future
	switch {
	case role == Voter && p.Role == Standby:
		steps = append(steps, addVoter)
	case role == Voter: // from spare
		steps = append(steps, remove, addVoter)
	case role == Standby && p.Role == Voter:
		steps = append(steps, demote)
	case role == Standby: // from spare
		steps = append(steps, remove, addStandby)
	case p.Role == Voter: // to spare
		steps = append(steps, demote, remove, addSpare)
	default: // standby to spare
		steps = append(steps, remove, addSpare)
	}
	for i, step := range steps {
		if err := n.mapMembershipErr(waitFuture(ctx, step())); err != nil {
			if i == len(steps)-1 && len(steps) > 1 && i > 0 && (p.Role == Spare) != (role == Spare) {
				return fmt.Errorf("%w (node %d was removed from the configuration to change its address, and not added "+
					"again: add it with AddNode as a %s)", err, id, role)
			}
			return err
		}
	}
	return nil
}

// RoleConfig turns on automatic role management (Config.Roles): the
// leader keeps Voters voters and Standbys standbys among the members it
// can reach, taking them from the spares and standbys, and demotes members
// it has not reached for UnreachableAfter.
//
// Each round (every ProbeInterval) the leader asks every member for its
// status over the client protocol, then makes at most one change, in this
// order of need:
//
//  1. a voter unreachable for UnreachableAfter: make it a spare;
//  2. fewer reachable voters than Voters: promote the reachable standby
//     that has applied the most (if it is within a few entries of the
//     leader), or else make a reachable spare a standby (it is promoted
//     once it has caught up);
//  3. more voters that answer than Voters: make one (not the leader) a
//     standby;
//  4. a standby unreachable for UnreachableAfter: make it a spare;
//  5. fewer reachable standbys than Standbys: make a reachable spare a
//     standby;
//  6. more reachable standbys than Standbys: make one a spare.
//
// The voters are changed (steps 1 to 3) only if the voters that answered
// the round's probe, a new voter not counted, are a quorum of the voters
// after the change, or (to add one) every voter answered: a change never
// leaves a cluster that can commit unable to. So a dead voter is replaced
// in two rounds: made a spare, then a standby promoted. A member that
// comes back after being made a spare stays one until a role is needed.
//
// Moves to and from spare are two configuration changes (see Assign):
// should the leader fail between them, the member is no longer in the
// configuration, and no later leader knows it; an operator adds it again
// (the leader logs each move).
//
// Every change is a Raft configuration change, so it needs a quorum of
// the current voters: a cluster that lost its quorum needs Recover.
type RoleConfig struct {
	Voters   int // default 3
	Standbys int // default 0: voters and spares only
	// UnreachableAfter: how long a voter or standby may not answer before
	// it is replaced. Default 30s.
	UnreachableAfter time.Duration
	// ProbeInterval: how often the leader probes the members and decides.
	// Default 1s.
	ProbeInterval time.Duration
}

func (rc RoleConfig) withDefaults() RoleConfig {
	rc.Voters = or(rc.Voters, 3)
	rc.UnreachableAfter = or(rc.UnreachableAfter, 30*time.Second)
	rc.ProbeInterval = or(rc.ProbeInterval, time.Second)
	return rc
}

func (rc RoleConfig) validate() error {
	rc = rc.withDefaults()
	switch {
	case rc.Voters < 0 || rc.Standbys < 0:
		return fmt.Errorf("Roles: Voters %d and Standbys %d must not be negative", rc.Voters, rc.Standbys)
	case rc.ProbeInterval < 10*time.Millisecond:
		return fmt.Errorf("Roles: ProbeInterval %v is under 10ms: a probe needs time to be answered", rc.ProbeInterval)
	case rc.UnreachableAfter < 2*rc.ProbeInterval:
		return fmt.Errorf("Roles: UnreachableAfter %v is under two ProbeIntervals (%v)", rc.UnreachableAfter, rc.ProbeInterval)
	}
	return nil
}

// caughtUp is how far, in Raft entries, a standby may trail the leader's
// applied index to be promoted to voter.
const caughtUp = 64

// roleManager is the state of automatic role management on one node; it
// acts only while the node is the ready leader.
type roleManager struct {
	n    *Node
	rc   RoleConfig
	seen map[NodeID]time.Time // when a member last answered (or when this leadership first saw it)
	term uint64               // the leadership seen belongs to
}

func (n *Node) manageRoles() {
	defer n.wg.Done()
	m := &roleManager{n: n, rc: n.cfg.Roles.withDefaults(), seen: map[NodeID]time.Time{}}
	tick := time.NewTicker(m.rc.ProbeInterval)
	defer tick.Stop()
	for {
		select {
		case <-n.done:
			return
		case <-tick.C:
			if err := m.round(); err != nil && !errors.Is(err, ErrClosed) {
				n.cfg.Logger.Warn("role management", "err", err)
			}
			n.roleRounds.Add(1)
		}
	}
}

// probe is a member's answer to a round's status request.
type probe struct {
	ok      bool
	applied uint64
}

// round probes the members and makes at most one change.
func (m *roleManager) round() error {
	n := m.n
	term := n.readyTerm()
	if term == 0 {
		return nil // not the ready leader
	}
	if term != m.term {
		m.term, m.seen = term, map[NodeID]time.Time{}
	}
	ctx, cancel := context.WithTimeout(context.Background(), n.cfg.ApplyTimeout)
	defer cancel()
	go func() {
		select {
		case <-n.done:
			cancel()
		case <-ctx.Done():
		}
	}()
	members, err := n.Members(ctx)
	if err != nil {
		return err
	}
	probes := m.probe(ctx, members)
	now := time.Now()
	online := func(p Peer) bool {
		if p.ID == n.cfg.ID || probes[p.ID].ok {
			return true
		}
		return now.Sub(m.seen[p.ID]) < m.rc.UnreachableAfter
	}
	reachable := func(p Peer) bool { return p.ID == n.cfg.ID || probes[p.ID].ok }
	var voters, standbys, spares []Peer
	for _, p := range members {
		if _, ok := m.seen[p.ID]; !ok || probes[p.ID].ok {
			m.seen[p.ID] = now
		}
		switch p.Role {
		case Voter:
			voters = append(voters, p)
		case Standby:
			standbys = append(standbys, p)
		default:
			spares = append(spares, p)
		}
	}
	count := func(ps []Peer, f func(Peer) bool) (out []Peer) {
		for _, p := range ps {
			if f(p) {
				out = append(out, p)
			}
		}
		return out
	}
	down := func(p Peer) bool { return !online(p) }
	applied := n.fsm.AppliedIndex()
	assign := func(p Peer, role Role, why string) error {
		n.cfg.Logger.Info("role management: assigning a role", "node", p.ID, "from", p.Role, "to", role, "why", why)
		return n.Assign(ctx, p.ID, role)
	}
	// Highest ID first: the choice among equals is the same every round.
	last := func(ps []Peer) Peer {
		return slices.MaxFunc(ps, func(a, b Peer) int { return cmp.Compare(a.ID, b.ID) })
	}

	// A voter is demoted only if the voters left that answered this round
	// are a quorum of the voters left. One is added only if the voters
	// that answered, the new one not counted, are a quorum of the voters
	// after it (a new voter may not acknowledge: its Raft connection may
	// be cut while its client protocol answers), or all the voters
	// answered: a cluster of one or two voters cannot grow otherwise, and
	// a healthy one then loses no more than it would if that voter failed.
	answered := count(voters, reachable)
	keepsQuorum := func(without Peer) bool {
		left := count(voters, func(v Peer) bool { return v.ID != without.ID })
		return len(count(left, reachable)) > len(left)/2
	}
	canAdd := func() bool { return len(answered) > (len(voters)+1)/2 || len(answered) == len(voters) }
	if dead := count(voters, down); len(dead) > 0 && keepsQuorum(dead[0]) {
		return assign(dead[0], Spare, fmt.Sprintf("unreachable for %s", m.rc.UnreachableAfter))
	}
	if upVoters := count(voters, online); len(upVoters) < m.rc.Voters {
		ready := count(standbys, func(p Peer) bool { return reachable(p) && probes[p.ID].applied+caughtUp >= applied })
		if len(ready) > 0 && canAdd() {
			best := slices.MaxFunc(ready, func(a, b Peer) int { return cmp.Compare(probes[a.ID].applied, probes[b.ID].applied) })
			return assign(best, Voter, fmt.Sprintf("%d of %d voters reachable", len(upVoters), m.rc.Voters))
		}
		if len(count(standbys, reachable)) == 0 {
			if up := count(spares, reachable); len(up) > 0 {
				return assign(up[0], Standby, "a voter is needed: a standby catches up first")
			}
		}
	}
	if len(answered) > m.rc.Voters {
		others := count(answered, func(p Peer) bool { return p.ID != n.cfg.ID })
		if p := last(others); keepsQuorum(p) {
			return assign(p, Standby, fmt.Sprintf("%d voters answer, %d wanted", len(answered), m.rc.Voters))
		}
	}
	if dead := count(standbys, down); len(dead) > 0 {
		return assign(dead[0], Spare, fmt.Sprintf("unreachable for %s", m.rc.UnreachableAfter))
	}
	upStandbys := count(standbys, online)
	if len(upStandbys) < m.rc.Standbys {
		if up := count(spares, reachable); len(up) > 0 {
			return assign(up[0], Standby, fmt.Sprintf("%d standbys, %d wanted", len(upStandbys), m.rc.Standbys))
		}
	}
	if len(upStandbys) > m.rc.Standbys {
		return assign(last(upStandbys), Spare, fmt.Sprintf("%d standbys, %d wanted", len(upStandbys), m.rc.Standbys))
	}
	return nil
}

// probe asks every other member for its status, all at once, waiting for
// each at most ProbeInterval or a second, whichever is longer: a member
// slow to answer is not taken for gone.
func (m *roleManager) probe(ctx context.Context, members []Peer) map[NodeID]probe {
	ctx, cancel := context.WithTimeout(ctx, max(m.rc.ProbeInterval, time.Second))
	defer cancel()
	var mu sync.Mutex
	var wg sync.WaitGroup
	out := map[NodeID]probe{}
	for _, p := range members {
		if p.ID == m.n.cfg.ID {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			st, err := driver.RemoteStatus(ctx, m.n.stream.dial, p.Address)
			if err != nil || st.ID != uint64(p.ID) {
				return
			}
			mu.Lock()
			out[p.ID] = probe{ok: true, applied: st.AppliedIndex}
			mu.Unlock()
		}()
	}
	wg.Wait()
	return out
}
