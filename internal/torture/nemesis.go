package torture

import (
	"context"
	"fmt"
	"math/rand"
	"slices"
	"time"

	"github.com/godqlite/dqlite/internal/faults"
)

// Nemeses are the kinds of fault a run can inject.
var Nemeses = []string{"partition", "kill", "pause", "disk", "member"}

// fault is one step of a schedule: wait gap, inject kind (variant and pick
// choose among its forms and victims), hold it for hold, then heal.
type fault struct {
	gap, hold time.Duration
	kind      string
	variant   int
	pick      int
}

// schedule draws the faults of a run from its seed: the same seed gives
// the same schedule. Victims named by role ("the leader") are resolved
// when the fault starts.
func schedule(seed int64, kinds []string, d time.Duration) []fault {
	rng := rand.New(rand.NewSource(seed))
	var s []fault
	for t := time.Duration(0); t < d; {
		f := fault{
			gap:     time.Duration(1000+rng.Intn(3000)) * time.Millisecond,
			hold:    time.Duration(1500+rng.Intn(4500)) * time.Millisecond,
			kind:    kinds[rng.Intn(len(kinds))],
			variant: rng.Intn(1 << 20),
			pick:    rng.Intn(1 << 20),
		}
		t += f.gap + f.hold
		s = append(s, f)
	}
	return s
}

// nemesis injects a schedule's faults into a cluster.
type nemesis struct {
	c    *cluster
	logf func(string, ...any)
	// ops counts faults injected, by kind.
	ops map[string]int
}

// run injects the faults of sched until ctx is done, healing each before
// the next.
func (n *nemesis) run(ctx context.Context, sched []fault) {
	for _, f := range sched {
		sleep(ctx, f.gap)
		if ctx.Err() != nil {
			return
		}
		heal := n.inject(ctx, f)
		sleep(ctx, f.hold)
		if heal != nil {
			heal()
		}
	}
}

// pickOf returns one of s, chosen by p.
func pickOf(s []int, p int) int {
	if len(s) == 0 {
		return -1
	}
	return s[p%len(s)]
}

// inject starts fault f and returns how to heal it (nil: nothing to heal).
func (n *nemesis) inject(ctx context.Context, f fault) func() {
	c := n.c
	members := c.upMembers()
	leader := c.leader(ctx)
	n.ops[f.kind]++
	switch f.kind {
	case "partition":
		return n.partition(ctx, f, members, leader)
	case "kill":
		var victims []int
		switch f.variant % 3 {
		case 0:
			victims = []int{pickOf(members, f.pick)}
		case 1:
			victims = []int{leader}
		case 2:
			all := c.memberSlots()
			rand.New(rand.NewSource(int64(f.pick))).Shuffle(len(all), func(i, j int) { all[i], all[j] = all[j], all[i] })
			victims = all[:len(all)/2+1]
		}
		victims = slices.DeleteFunc(victims, func(v int) bool { return v < 0 })
		n.logf("nemesis: SIGKILL slots %v (leader %d) for %v", victims, leader, f.hold)
		for _, v := range victims {
			c.kill(v, false)
		}
		return func() {
			for _, v := range victims {
				if err := c.start(v, "", ""); err != nil {
					n.logf("nemesis: restart slot %d: %v", v, err)
				}
			}
			n.logf("nemesis: restarted slots %v", victims)
		}
	case "pause":
		if leader < 0 {
			n.logf("nemesis: no leader to pause")
			return nil
		}
		n.logf("nemesis: SIGSTOP leader slot %d for %v", leader, f.hold)
		if err := c.pause(leader); err != nil {
			n.logf("nemesis: pause: %v", err)
			return nil
		}
		return func() {
			c.resume(leader)
			n.logf("nemesis: SIGCONT slot %d", leader)
		}
	case "disk":
		victim := pickOf(members, f.pick)
		if f.variant%2 == 0 && leader >= 0 {
			victim = leader
		}
		mode := []faults.Mode{faults.Full, faults.Full, faults.Broken, faults.Broken, faults.BadSync, faults.BadSync}[f.variant%6]
		if victim < 0 {
			return nil
		}
		n.logf("nemesis: disk %s on slot %d (leader %d) for %v", mode, victim, leader, f.hold)
		n.fault(ctx, victim, 0, mode)
		return func() {
			n.fault(ctx, victim, 0, faults.None)
			n.logf("nemesis: disk of slot %d repaired", victim)
		}
	case "member":
		n.member(ctx, f, leader)
	}
	return nil
}

// fault sets slot i's network drops (a bit mask of slots) and disk. A
// node that is starting is waited for; one that is down or stopped is
// skipped (it starts without faults). Each request carries a generation,
// so that one that waited in the listen queue never undoes a newer one.
func (n *nemesis) fault(ctx context.Context, i int, drop uint64, disk faults.Mode) {
	if !n.c.waitUp(i, 10*time.Second) {
		return
	}
	gen := n.c.faultGen.Add(1)
	for try := 0; try < 5; try++ {
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		_, o := n.c.call(cctx, i, "/fault", map[string]int64{"drop": int64(drop), "disk": int64(disk), "gen": gen})
		cancel()
		if o == ok || ctx.Err() != nil {
			return
		}
		sleep(ctx, 100*time.Millisecond)
	}
	n.logf("nemesis: could not set faults of slot %d", i)
}

// partition cuts the network into groups. Each node drops what it sends
// to nodes outside its group; a bridge node is in both halves; one-way
// loss has a single node drop what it sends.
func (n *nemesis) partition(ctx context.Context, f fault, members []int, leader int) func() {
	all := n.c.memberSlots()
	rng := rand.New(rand.NewSource(int64(f.pick)))
	rng.Shuffle(len(all), func(i, j int) { all[i], all[j] = all[j], all[i] })
	group := map[int]int{} // slot → group; -1: bridge
	var desc string
	switch f.variant % 5 {
	case 0: // isolate the leader
		if leader < 0 {
			leader = pickOf(all, f.pick)
		}
		for _, s := range all {
			group[s] = 0
		}
		group[leader] = 1
		desc = fmt.Sprintf("isolate leader %d", leader)
	case 1: // a random minority from the majority
		k := 1 + rng.Intn(max(1, (len(all)-1)/2))
		for i, s := range all {
			group[s] = map[bool]int{true: 1, false: 0}[i < k]
		}
		desc = fmt.Sprintf("minority %v from majority %v", all[:k], all[k:])
	case 2: // every node of a majority alone: no quorum anywhere
		for i, s := range all {
			group[s] = i
		}
		desc = fmt.Sprintf("every node alone %v", all)
	case 3: // a bridge: two halves, one node in both
		half := len(all) / 2
		for i, s := range all {
			group[s] = map[bool]int{true: 0, false: 1}[i < half]
		}
		group[all[half]] = -1
		desc = fmt.Sprintf("halves %v | %v bridged by %d", all[:half], all[half+1:], all[half])
	case 4: // one-way: one node's sends are lost
		v := all[0]
		if f.pick%2 == 0 && leader >= 0 {
			v = leader
		}
		n.logf("nemesis: one-way loss: everything slot %d sends is lost, for %v", v, f.hold)
		n.fault(ctx, v, allBits(n.c), faults.None)
		return func() { n.healAll(ctx) }
	}
	n.logf("nemesis: partition: %s, for %v", desc, f.hold)
	for _, s := range all {
		var drop uint64
		for _, t := range all {
			if t != s && group[s] != -1 && group[t] != -1 && group[s] != group[t] {
				drop |= 1 << t
			}
		}
		n.fault(ctx, s, drop, faults.None)
	}
	return func() { n.healAll(ctx) }
}

func allBits(c *cluster) uint64 { return 1<<len(c.procs) - 1 }

// healAll lifts every network and disk fault on every running node.
func (n *nemesis) healAll(ctx context.Context) {
	states, _, _ := n.c.view()
	for i, st := range states {
		if st == up || st == starting {
			n.fault(ctx, i, 0, faults.None)
		}
	}
	n.logf("nemesis: healed")
}

// member changes the cluster's membership through its leader: add a node,
// remove one, replace one, or transfer leadership.
func (n *nemesis) member(ctx context.Context, f fault, leader int) {
	c := n.c
	if leader < 0 {
		n.logf("nemesis: no leader for a membership change")
		return
	}
	states, members, ids := c.view()
	var others, spare []int
	for i := range states {
		switch {
		case members[i] && i != leader:
			others = append(others, i)
		case !members[i] && states[i] == down:
			spare = append(spare, i)
		}
	}
	call := func(path string, q map[string]int64) outcome {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		rep, o := c.call(cctx, leader, path, q)
		if o != ok {
			n.logf("nemesis: %s %v: %v %s", path, q, o, rep.Err)
		}
		return o
	}
	add := func(s int) {
		c.wipe(s) // under its old ID, which may then never come back
		c.mu.Lock()
		id := c.nextID
		c.nextID++
		c.procs[s].id = id
		c.mu.Unlock()
		if err := c.start(s, "", ""); err != nil {
			n.logf("nemesis: start slot %d: %v", s, err)
			return
		}
		o := call("/add", map[string]int64{"id": int64(id), "slot": int64(s)})
		n.logf("nemesis: add slot %d as node %d: %v", s, id, o)
		if o == ok {
			c.setMember(s, true)
		} else {
			n.resync(ctx)
		}
	}
	remove := func(s int) bool {
		o := call("/remove", map[string]int64{"id": int64(ids[s])})
		n.logf("nemesis: remove slot %d (node %d): %v", s, ids[s], o)
		if o != ok {
			n.resync(ctx)
			return false
		}
		c.setMember(s, false)
		c.kill(s, false)
		c.wipe(s)
		return true
	}
	switch op := f.variant % 4; {
	case op == 0 && len(spare) > 0:
		add(pickOf(spare, f.pick))
	case op == 1 && len(others)+1 > 3:
		remove(pickOf(others, f.pick))
	case op == 2 && len(others) > 0:
		// Replace a dead node: it dies, is removed, and a new node with a
		// new ID and an empty directory takes its place.
		s := pickOf(others, f.pick)
		c.kill(s, false)
		n.logf("nemesis: replace slot %d (node %d): killed", s, ids[s])
		if remove(s) {
			add(s)
		} else if !c.isMember(s) {
			c.wipe(s)
		} else if err := c.start(s, "", ""); err != nil {
			n.logf("nemesis: restart slot %d: %v", s, err)
		}
	default:
		if t := pickOf(others, f.pick); t >= 0 {
			o := call("/transfer", map[string]int64{"id": int64(ids[t])})
			n.logf("nemesis: transfer leadership from slot %d to slot %d: %v", leader, t, o)
		}
	}
}

// resync sets the driver's membership from the cluster's committed
// configuration, and stops and wipes nodes that are not members. A write
// through the leader first commits every configuration change before it in
// the leader's log, so the leader's latest configuration is then the
// committed one (the nemesis changes membership one step at a time). A
// member whose directory the driver wiped is removed: it must not come back
// as a voter that forgot its log.
func (n *nemesis) resync(ctx context.Context) {
	c := n.c
	for try := 0; try < 30 && ctx.Err() == nil; try++ {
		l := c.waitLeader(ctx, 10*time.Second)
		if l < 0 {
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, o := c.call(cctx, l, "/marker/write", map[string]int64{"v": -time.Now().UnixNano()})
		cancel()
		st, err := c.status(ctx, l)
		if o != ok || err != nil || !st.IsLeader || len(st.Members) == 0 {
			sleep(ctx, 200*time.Millisecond)
			continue
		}
		in := map[uint64]bool{}
		for _, m := range st.Members {
			in[uint64(m.ID)] = true
		}
		c.mu.Lock()
		type change struct {
			slot   int
			id     uint64
			remove bool // a wiped voter: remove it from the cluster
			stop   bool // not a member: stop and wipe it
		}
		var changes []change
		for s, p := range c.procs {
			switch {
			case in[p.id] && p.wiped && p.idAtWipe == p.id:
				changes = append(changes, change{slot: s, id: p.id, remove: true})
			case !in[p.id] && (p.member || p.state != down):
				changes = append(changes, change{slot: s, id: p.id, stop: true})
			case in[p.id] && !p.member:
				n.logf("nemesis: slot %d (node %d) is a member after all", s, p.id)
			}
			p.member = in[p.id]
		}
		c.mu.Unlock()
		for _, ch := range changes {
			if ch.stop {
				n.logf("nemesis: slot %d (node %d) is not a member: stopped and wiped", ch.slot, ch.id)
				c.kill(ch.slot, false)
				c.wipe(ch.slot)
				continue
			}
			n.logf("nemesis: slot %d (node %d) is a member whose directory was wiped: removing it", ch.slot, ch.id)
			cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			_, o := c.call(cctx, l, "/remove", map[string]int64{"id": int64(ch.id)})
			cancel()
			if o != ok {
				sleep(ctx, 200*time.Millisecond)
				try-- // until it is gone
				continue
			}
			c.setMember(ch.slot, false)
			c.kill(ch.slot, false)
		}
		if len(changes) == 0 || !changes[0].remove {
			return
		}
	}
}
