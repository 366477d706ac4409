package torture

import (
	"context"
	"fmt"
	"math"
	"math/rand"
	"path/filepath"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/anishathalye/porcupine"
)

// opTimeout bounds one client request: longer than the nodes'
// BusyTimeout and ApplyTimeout together, so that a commit without quorum
// fails on the node, with its error, before the client gives up on it.
const opTimeout = 8 * time.Second

// router sends a client's requests: writes (and strong reads) to the node
// it believes leads, reads to any node.
type router struct {
	c      *cluster
	rng    *rand.Rand
	leader int
	// anyNode sends every request to a node chosen at random: followers
	// forward writes to the leader.
	anyNode bool
}

func (r *router) any() int {
	ups := r.c.upMembers()
	if len(ups) == 0 {
		return -1
	}
	return ups[r.rng.Intn(len(ups))]
}

func (r *router) target() int {
	for _, s := range r.c.upMembers() {
		if s == r.leader {
			return s
		}
	}
	return r.any()
}

// write sends a request that only the leader can serve.
func (r *router) write(ctx context.Context, path string, q map[string]int64) (reply, outcome) {
	t := r.target()
	if r.anyNode {
		t = r.any()
	}
	if t < 0 {
		sleep(ctx, 50*time.Millisecond)
		return reply{Err: "no node is up"}, failed
	}
	rep, o := r.send(ctx, t, path, q)
	if o == failed && rep.Kind == kindNotLeader {
		r.leader = rep.Leader
		if r.leader == t || r.leader < 0 {
			r.leader = r.any()
			sleep(ctx, 50*time.Millisecond) // an election is under way
		}
	}
	return rep, o
}

func (r *router) send(ctx context.Context, t int, path string, q map[string]int64) (reply, outcome) {
	ctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	return r.c.call(ctx, t, path, q)
}

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// counts are the outcomes of a workload's operations.
type counts struct {
	ops, ok, failed, unknown atomic.Int64
	whyMu                    sync.Mutex
	why                      map[string]int // errors of failed and unknown operations, by kind
}

// note records why an operation did not succeed.
func (c *counts) note(o outcome, rep reply) {
	if o == ok {
		return
	}
	msg := rep.Err
	if len(msg) > 120 {
		msg = msg[:120]
	}
	c.whyMu.Lock()
	if c.why == nil {
		c.why = map[string]int{}
	}
	c.why[o.String()+": "+msg]++
	c.whyMu.Unlock()
}

// reasons lists the most frequent errors.
func (c *counts) reasons() []string {
	c.whyMu.Lock()
	defer c.whyMu.Unlock()
	var out []string
	for k, n := range c.why {
		out = append(out, fmt.Sprintf("%6d × %s", n, k))
	}
	sort.Sort(sort.Reverse(sort.StringSlice(out)))
	return out[:min(len(out), 6)]
}

func (c *counts) add(o outcome) {
	c.ops.Add(1)
	switch o {
	case ok:
		c.ok.Add(1)
	case failed:
		c.failed.Add(1)
	default:
		c.unknown.Add(1)
	}
}

func (c *counts) result(name string) Result {
	return Result{Workload: name, Ops: int(c.ops.Load()), OK: int(c.ok.Load()),
		Failed: int(c.failed.Load()), Unknown: int(c.unknown.Load()), Linearizable: "n/a", Notes: c.reasons()}
}

// workload is a kind of client load and the check of its history.
type workload interface {
	name() string
	db() int // index in dbNames of its database
	client(ctx context.Context, r *router, id int)
	check(finals map[int]*final) Result
}

// finalSlots returns the slots of finals in order.
func finalSlots(finals map[int]*final) []int {
	var s []int
	for k := range finals {
		s = append(s, k)
	}
	sort.Ints(s)
	return s
}

// divergence counts the nodes whose copy differs from the first's, by file
// hash or by content.
func divergence(finals map[int]*final) (int, []string) {
	slots := finalSlots(finals)
	if len(slots) == 0 {
		return 0, []string{"no node reported its copy"}
	}
	var problems []string
	first := finals[slots[0]]
	n := 0
	for _, s := range slots {
		f := finals[s]
		if f.Integrity != "ok" {
			problems = append(problems, fmt.Sprintf("slot %d: integrity_check: %s", s, f.Integrity))
		}
		if f.Hash != first.Hash || fmt.Sprint(f.Values) != fmt.Sprint(first.Values) {
			n++
			problems = append(problems, fmt.Sprintf("slot %d: database differs from slot %d's (hash %s vs %s)", s, slots[0], f.Hash, first.Hash))
		}
	}
	return n, problems
}

// setWorkload inserts unique values; every acknowledged one must be on
// every node at the end, and no failed one on any.
type setWorkload struct {
	counts
	pad                    int64 // every 20th insert also writes this many bytes, if set
	next                   atomic.Int64
	mu                     sync.Mutex
	acked, failed, unknown map[int64]bool
}

func newSet() *setWorkload {
	return &setWorkload{acked: map[int64]bool{}, failed: map[int64]bool{}, unknown: map[int64]bool{}}
}

func (w *setWorkload) name() string { return "set" }
func (w *setWorkload) db() int      { return 2 }

func (w *setWorkload) client(ctx context.Context, r *router, id int) {
	for ctx.Err() == nil {
		v := w.next.Add(1)
		q := map[string]int64{"v": v}
		if w.pad > 0 && v%20 == 0 {
			q["pad"] = w.pad
		}
		rep, o := r.write(ctx, "/set/add", q)
		if ctx.Err() != nil && o != ok {
			o = unknown // cut short by the end of the run
		}
		w.add(o)
		w.note(o, rep)
		w.mu.Lock()
		map[outcome]map[int64]bool{ok: w.acked, failed: w.failed, unknown: w.unknown}[o][v] = true
		w.mu.Unlock()
		sleep(ctx, 5*time.Millisecond)
	}
}

func (w *setWorkload) check(finals map[int]*final) Result {
	res := w.result("set")
	res.Divergent, res.Problems = divergence(finals)
	for _, s := range finalSlots(finals) {
		present := map[int64]bool{}
		for _, v := range finals[s].Values {
			present[v] = true
		}
		for v := range w.acked {
			if !present[v] {
				res.Lost++
				res.Problems = append(res.Problems, fmt.Sprintf("slot %d: acknowledged value %d is missing", s, v))
			}
		}
		for v := range present {
			if !w.acked[v] && !w.unknown[v] && !w.failed[v] {
				res.Lost++
				res.Problems = append(res.Problems, fmt.Sprintf("slot %d: value %d, never inserted, is present", s, v))
			}
		}
		for v := range w.failed {
			if present[v] {
				res.Lost++
				res.Problems = append(res.Problems, fmt.Sprintf("slot %d: value %d, whose insert failed, is present", s, v))
			}
		}
	}
	return res
}

// bankWorkload moves money between accounts in transactions; every read,
// on any node, must see the same total.
type bankWorkload struct {
	counts
	reads, badReads atomic.Int64
	mu              sync.Mutex
	bad             []string
}

func (w *bankWorkload) name() string { return "bank" }
func (w *bankWorkload) db() int      { return 0 }

func (w *bankWorkload) client(ctx context.Context, r *router, id int) {
	for ctx.Err() == nil {
		if id == 0 { // the reader
			t := r.any()
			if t < 0 {
				sleep(ctx, 50*time.Millisecond)
				continue
			}
			rep, o := r.send(ctx, t, "/bank/read", nil)
			if o == ok {
				w.reads.Add(1)
				w.checkRead(fmt.Sprintf("read on slot %d", t), rep.Values)
			}
			sleep(ctx, 10*time.Millisecond)
			continue
		}
		from := r.rng.Intn(bankAccounts)
		to := (from + 1 + r.rng.Intn(bankAccounts-1)) % bankAccounts
		rep, o := r.write(ctx, "/bank/transfer", map[string]int64{"from": int64(from), "to": int64(to), "amount": int64(1 + r.rng.Intn(20))})
		if ctx.Err() != nil && o != ok {
			o = unknown
		}
		w.add(o)
		w.note(o, rep)
		sleep(ctx, 5*time.Millisecond)
	}
}

func (w *bankWorkload) checkRead(where string, bals []int64) bool {
	var total int64
	neg := false
	for _, b := range bals {
		total += b
		neg = neg || b < 0
	}
	if len(bals) == bankAccounts && total == bankAccounts*bankInitial && !neg {
		return true
	}
	w.badReads.Add(1)
	w.mu.Lock()
	if len(w.bad) < 20 {
		w.bad = append(w.bad, fmt.Sprintf("%s: balances %v (total %d, want %d)", where, bals, total, bankAccounts*bankInitial))
	}
	w.mu.Unlock()
	return false
}

func (w *bankWorkload) check(finals map[int]*final) Result {
	res := w.result("bank")
	res.Divergent, res.Problems = divergence(finals)
	for _, s := range finalSlots(finals) {
		w.checkRead(fmt.Sprintf("final copy on slot %d", s), finals[s].Values)
	}
	res.Reads, res.BadReads = int(w.reads.Load()), int(w.badReads.Load())
	if res.Reads == 0 {
		res.Problems = append(res.Problems, "no read succeeded: nothing was checked")
	}
	res.Lost = res.BadReads
	res.Problems = append(res.Problems, w.bad...)
	return res
}

// registerWorkload reads, writes and compare-and-sets registers, and
// checks the history for linearizability. Each key takes keyOps operations
// and then the clients move to the next, as Jepsen's independent keys do,
// so that each key's history stays small enough to check.
type registerWorkload struct {
	counts
	local   bool // read each node's own copy (the negative control)
	start   time.Time
	seq     atomic.Int64
	okReads atomic.Int64
	timeout time.Duration
	dir     string

	mu  sync.Mutex
	ops []porcupine.Operation
}

const keyOps = 120

type regInput struct {
	Op       string `json:"op"` // read, write, cas
	Key      int64  `json:"key"`
	V        int64  `json:"v,omitempty"`
	Old      int64  `json:"old,omitempty"`
	ReadSlot int    `json:"slot,omitempty"`
}

type regOutput struct {
	Value   int64 `json:"value"`
	OK      bool  `json:"ok"`
	Unknown bool  `json:"unknown,omitempty"`
}

func (w *registerWorkload) name() string { return "register" }
func (w *registerWorkload) db() int      { return 1 }

func (w *registerWorkload) now() int64 { return time.Since(w.start).Nanoseconds() }

func (w *registerWorkload) client(ctx context.Context, r *router, id int) {
	for ctx.Err() == nil {
		key := w.seq.Add(1) / keyOps
		in := regInput{Key: key}
		var rep reply
		var o outcome
		call := w.now()
		switch p := r.rng.Intn(10); {
		case p < 5:
			in.Op = "read"
			if w.local || r.anyNode {
				t := r.any()
				if t < 0 {
					sleep(ctx, 50*time.Millisecond)
					continue
				}
				in.ReadSlot = t
				level := int64(2) // linearizable, on whichever node
				if w.local {
					level = 0
				}
				rep, o = r.send(ctx, t, "/reg/read", map[string]int64{"k": key, "level": level})
			} else {
				rep, o = r.write(ctx, "/reg/read", map[string]int64{"k": key, "level": 1})
			}
		case p < 8:
			in.Op, in.V = "write", int64(1+r.rng.Intn(5))
			rep, o = r.write(ctx, "/reg/write", map[string]int64{"k": key, "v": in.V})
		default:
			in.Op, in.Old, in.V = "cas", int64(1+r.rng.Intn(5)), int64(1+r.rng.Intn(5))
			rep, o = r.write(ctx, "/reg/cas", map[string]int64{"k": key, "old": in.Old, "new": in.V})
		}
		ret := w.now()
		if ctx.Err() != nil && o != ok {
			o = unknown
		}
		w.add(o)
		w.note(o, rep)
		op := porcupine.Operation{ClientId: id, Input: in, Call: call, Return: ret}
		switch {
		case o == failed:
			continue // it did not happen
		case o == unknown && in.Op == "read":
			continue // a read that may not have happened changes nothing
		case o == unknown:
			op.Output, op.Return = regOutput{Unknown: true}, math.MaxInt64
		default:
			op.Output = regOutput{Value: rep.Value, OK: rep.Value == 1}
			if in.Op == "read" {
				w.okReads.Add(1)
			}
		}
		w.mu.Lock()
		w.ops = append(w.ops, op)
		w.mu.Unlock()
		sleep(ctx, 2*time.Millisecond)
	}
}

// registerModel is a register per key, 0 while unwritten.
var registerModel = porcupine.Model{
	Partition: func(h []porcupine.Operation) [][]porcupine.Operation {
		byKey := map[int64][]porcupine.Operation{}
		var keys []int64
		for _, op := range h {
			k := op.Input.(regInput).Key
			if byKey[k] == nil {
				keys = append(keys, k)
			}
			byKey[k] = append(byKey[k], op)
		}
		var out [][]porcupine.Operation
		for _, k := range keys {
			out = append(out, byKey[k])
		}
		return out
	},
	Init: func() any { return int64(0) },
	Step: func(state, input, output any) (bool, any) {
		s, in, out := state.(int64), input.(regInput), output.(regOutput)
		switch in.Op {
		case "read":
			return out.Value == s, s
		case "write":
			return true, in.V
		}
		// cas
		switch {
		case out.Unknown && s == in.Old:
			return true, in.V
		case out.Unknown:
			return true, s
		case out.OK:
			return s == in.Old, in.V
		}
		return s != in.Old, s
	},
	DescribeOperation: func(input, output any) string {
		in, out := input.(regInput), output.(regOutput)
		res := fmt.Sprint(out.Value)
		if out.Unknown {
			res = "?"
		}
		switch in.Op {
		case "read":
			return fmt.Sprintf("read(k%d) -> %s", in.Key, res)
		case "write":
			return fmt.Sprintf("write(k%d, %d) %s", in.Key, in.V, map[bool]string{true: "?", false: ""}[out.Unknown])
		}
		return fmt.Sprintf("cas(k%d, %d -> %d) -> %s", in.Key, in.Old, in.V, map[bool]string{true: "?", false: fmt.Sprint(out.OK)}[out.Unknown])
	},
}

func (w *registerWorkload) check(finals map[int]*final) Result {
	res := w.result("register")
	res.Divergent, res.Problems = divergence(finals)
	if w.okReads.Load() == 0 {
		res.Problems = append(res.Problems, "no read succeeded: nothing was checked")
	}
	w.mu.Lock()
	ops := append([]porcupine.Operation(nil), w.ops...)
	w.mu.Unlock()
	result, info := porcupine.CheckOperationsVerbose(registerModel, ops, w.timeout)
	switch result {
	case porcupine.Ok:
		res.Linearizable = "yes"
	case porcupine.Illegal:
		res.Linearizable = "no"
		res.Problems = append(res.Problems, fmt.Sprintf("the history of %d operations is not linearizable", len(ops)))
		if w.dir != "" {
			path := filepath.Join(w.dir, "register-linearizability.html")
			if err := porcupine.VisualizePath(registerModel, info, path); err == nil {
				res.Problems = append(res.Problems, "see "+path)
			}
		}
	default:
		res.Linearizable = "unknown"
		res.Problems = append(res.Problems, fmt.Sprintf("the linearizability check of %d operations did not finish in %v", len(ops), w.timeout))
	}
	return res
}
