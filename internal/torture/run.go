// Package torture is dqlite's fault-injection suite: it runs a cluster of
// node processes on 127.0.0.1, drives workloads against them through a
// small HTTP endpoint while a nemesis partitions the network, kills,
// pauses, fills or breaks disks and changes membership, and then checks
// what the clients saw against what the nodes hold, as Jepsen does.
//
// go test runs a short version; cmd/dqlite-torture runs long ones.
package torture

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"
)

// Workloads are the workloads a run can drive.
var Workloads = []string{"set", "bank", "register"}

// Options of a run.
type Options struct {
	Duration  time.Duration // of the workload and faults, before the final check
	Nodes     int           // voters at the start (one more slot is kept for membership changes)
	Seed      int64         // draws the schedule of faults and the clients' choices
	Nemeses   []string      // kinds of fault: see Nemeses; empty: none
	Workloads []string      // see Workloads
	Clients   int           // clients per workload
	// LocalReads makes the register workload read each node's own copy
	// instead of the strongest read: the negative control, which the
	// linearizability check must reject.
	LocalReads bool
	// AnyNode sends each client request to a node chosen at random, not
	// to the leader: followers forward writes, and the register workload
	// reads at the linearizable level on whichever node it asks.
	AnyNode  bool
	LogStore string // the nodes' Config.LogStore
	// Dir is the run's directory: data directories, node logs and the
	// history. It is removed after a run that passed unless Keep.
	Dir  string
	Keep bool
	// Exe is the command that starts a node: Exe[0] with Exe[1:], then
	// NodeFlag and the node's arguments. Its main must call NodeMain.
	Exe []string
	// CheckTimeout bounds the linearizability check.
	CheckTimeout time.Duration
	Log          io.Writer // progress; nil: discarded
}

// Result of one workload.
type Result struct {
	Workload                 string
	Ops, OK, Failed, Unknown int
	Lost, Divergent          int
	Reads, BadReads          int // bank: reads, and those that saw a changed total
	Linearizable             string
	Problems                 []string // each makes the result FAIL
	Notes                    []string
}

// Pass reports whether the workload saw nothing wrong.
func (r Result) Pass() bool { return len(r.Problems) == 0 }

// String is the result line.
func (r Result) String() string {
	verdict := "PASS"
	if !r.Pass() {
		verdict = "FAIL"
	}
	return fmt.Sprintf("%-8s ops=%d ok=%d failed=%d unknown=%d lost=%d divergent=%d linearizable=%s %s",
		r.Workload, r.Ops, r.OK, r.Failed, r.Unknown, r.Lost, r.Divergent, r.Linearizable, verdict)
}

// Run runs the suite once and returns a result per workload. An error
// means the run itself could not be made (no cluster, no leader).
func Run(ctx context.Context, o Options) (results []Result, err error) {
	if !supported {
		return nil, errors.New("torture: not supported on this platform (it hands listeners to child processes and stops them with SIGSTOP)")
	}
	if o.Nodes < 3 || o.Nodes > 7 {
		return nil, fmt.Errorf("torture: %d nodes: need 3 to 7", o.Nodes)
	}
	for _, n := range o.Nemeses {
		if !slices.Contains(Nemeses, n) {
			return nil, fmt.Errorf("torture: unknown nemesis %q (have %s)", n, strings.Join(Nemeses, ", "))
		}
	}
	if len(o.Workloads) == 0 {
		return nil, errors.New("torture: no workload")
	}
	for _, w := range o.Workloads {
		if !slices.Contains(Workloads, w) {
			return nil, fmt.Errorf("torture: unknown workload %q (have %s)", w, strings.Join(Workloads, ", "))
		}
	}
	if len(o.Exe) == 0 {
		return nil, errors.New("torture: no command to start nodes with")
	}
	o.Clients = max(o.Clients, 1)
	o.LogStore = or(o.LogStore, "bolt")
	o.CheckTimeout = or(o.CheckTimeout, time.Minute)
	if err := os.MkdirAll(o.Dir, 0o755); err != nil {
		return nil, err
	}
	logf, closeLog, err := runLog(o.Dir, o.Log)
	if err != nil {
		return nil, err
	}
	defer closeLog()
	start := time.Now()
	logf("torture: seed=%d nodes=%d duration=%v nemeses=%v workloads=%v logstore=%s local-reads=%v any-node=%v dir=%s",
		o.Seed, o.Nodes, o.Duration, o.Nemeses, o.Workloads, o.LogStore, o.LocalReads, o.AnyNode, o.Dir)

	c, err := newCluster(o.Exe, o.Dir, o.Nodes, o.LogStore, logf)
	if err != nil {
		return nil, err
	}
	defer c.close()
	if err := setup(ctx, c); err != nil {
		return nil, err
	}
	logf("cluster up and set up")

	var wls []workload
	for _, name := range o.Workloads {
		switch name {
		case "set":
			wls = append(wls, newSet())
		case "bank":
			wls = append(wls, &bankWorkload{})
		case "register":
			wls = append(wls, &registerWorkload{local: o.LocalReads, start: start, timeout: o.CheckTimeout, dir: o.Dir})
		}
	}
	loadCtx, stopLoad := context.WithTimeout(ctx, o.Duration)
	defer stopLoad()
	var wg sync.WaitGroup
	seed := o.Seed
	for _, w := range wls {
		n := o.Clients
		if w.name() == "bank" {
			n++ // and a reader
		}
		for i := 0; i < n; i++ {
			seed++
			r := &router{c: c, rng: rand.New(rand.NewSource(seed)), leader: -1, anyNode: o.AnyNode}
			wg.Add(1)
			go func() {
				defer wg.Done()
				w.client(loadCtx, r, i)
			}()
		}
	}
	nem := &nemesis{c: c, logf: logf, ops: map[string]int{}}
	if len(o.Nemeses) > 0 {
		sched := schedule(o.Seed, o.Nemeses, o.Duration)
		wg.Add(1)
		go func() {
			defer wg.Done()
			nem.run(loadCtx, sched)
		}()
	}
	wg.Wait()
	logf("load and faults over (faults: %v); healing and checking", nem.ops)

	finals, problems := converge(ctx, c, nem, logf)
	for _, w := range wls {
		r := w.check(finals[w.db()])
		r.Problems = append(r.Problems, problems...)
		if r.OK == 0 {
			r.Problems = append(r.Problems, "no operation succeeded")
		}
		results = append(results, r)
		logf("%s", r)
		for _, p := range r.Problems {
			logf("  problem: %s", p)
		}
		for _, p := range r.Notes {
			logf("  note: %s", p)
		}
	}
	if w := findRegister(wls); w != nil {
		saveHistory(filepath.Join(o.Dir, "register-history.json"), w)
	}
	return results, nil
}

func findRegister(wls []workload) *registerWorkload {
	for _, w := range wls {
		if r, ok := w.(*registerWorkload); ok {
			return r
		}
	}
	return nil
}

func saveHistory(path string, w *registerWorkload) {
	w.mu.Lock()
	defer w.mu.Unlock()
	b, err := json.Marshal(w.ops)
	if err == nil {
		os.WriteFile(path, b, 0o644)
	}
}

func or[T comparable](v, def T) T {
	var zero T
	if v == zero {
		return def
	}
	return v
}

// setup waits for a leader and creates the workloads' tables through it.
func setup(ctx context.Context, c *cluster) error {
	deadline := time.Now().Add(60 * time.Second)
	var last string
	for time.Now().Before(deadline) && ctx.Err() == nil {
		if l := c.waitLeader(ctx, 5*time.Second); l >= 0 {
			cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			rep, o := c.call(cctx, l, "/setup", nil)
			cancel()
			if o == ok {
				return nil
			}
			last = rep.Err
		}
		sleep(ctx, 200*time.Millisecond)
	}
	return fmt.Errorf("torture: cluster did not come up: %s", last)
}

// converge heals every fault, restarts every member, waits until every
// member applied a marker written after the load, then collects each
// member's copy of each database and stops the nodes cleanly. Any node
// stuck on the way is a problem.
func converge(ctx context.Context, c *cluster, nem *nemesis, logf func(string, ...any)) (finals []map[int]*final, problems []string) {
	finals = make([]map[int]*final, len(dbNames))
	for i := range finals {
		finals[i] = map[int]*final{}
	}
	states, _, _ := c.view()
	for i, st := range states {
		if st == paused {
			c.resume(i)
		}
	}
	nem.healAll(ctx)
	nem.resync(ctx)
	states, members, _ := c.view()
	for i := range states {
		if members[i] && states[i] == down {
			if err := c.start(i, "", ""); err != nil {
				problems = append(problems, fmt.Sprintf("restart slot %d: %v", i, err))
			}
		}
	}
	nem.healAll(ctx) // restarted nodes start healthy; this also waits for their endpoints
	marker := time.Now().UnixNano()
	deadline := time.Now().Add(90 * time.Second)
	written := false
	var last string
	for !written && time.Now().Before(deadline) && ctx.Err() == nil {
		l := c.waitLeader(ctx, 10*time.Second)
		if l < 0 {
			last = "no leader"
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		rep, o := c.call(cctx, l, "/marker/write", map[string]int64{"v": marker})
		cancel()
		written, last = o == ok, rep.Err
		if !written {
			sleep(ctx, 200*time.Millisecond)
		}
	}
	if !written {
		c.mu.Lock()
		problems = append(problems, c.crashes...)
		c.mu.Unlock()
		return finals, append(problems, fmt.Sprintf("the cluster took no write within 90s after healing: %s", last))
	}
	live := c.memberSlots()
	logf("marker written; waiting for members %v to apply it", live)
	for _, s := range live {
		seen := false
		for time.Now().Before(deadline) && ctx.Err() == nil && !seen {
			cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			rep, o := c.call(cctx, s, "/marker/read", map[string]int64{"v": marker})
			cancel()
			seen = o == ok && rep.Found
			if !seen {
				sleep(ctx, 100*time.Millisecond)
			}
		}
		if !seen {
			problems = append(problems, fmt.Sprintf("slot %d did not apply the final marker within 90s of healing (stuck)", s))
		}
	}
	// The cluster's committed configuration (the marker committed after
	// every change) must be the driver's members, and no other node may run.
	if l := c.waitLeader(ctx, 10*time.Second); l >= 0 {
		if st, err := c.status(ctx, l); err == nil {
			var got, want []uint64
			for _, m := range st.Members {
				got = append(got, uint64(m.ID))
			}
			_, _, ids := c.view()
			for _, s := range live {
				want = append(want, ids[s])
			}
			slices.Sort(got)
			slices.Sort(want)
			if !slices.Equal(got, want) {
				problems = append(problems, fmt.Sprintf("the cluster's members are nodes %v, the driver's %v", got, want))
			}
		}
	}
	states, members, _ = c.view()
	for i := range states {
		if !members[i] && states[i] != down {
			problems = append(problems, fmt.Sprintf("slot %d runs but is not a member", i))
		}
	}
	for db := range dbNames {
		for _, s := range live {
			cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
			rep, o := c.call(cctx, s, "/final", map[string]int64{"db": int64(db)})
			cancel()
			if o != ok || rep.Final == nil {
				problems = append(problems, fmt.Sprintf("slot %d: final copy of %s: %s", s, dbNames[db], rep.Err))
				continue
			}
			finals[db][s] = rep.Final
		}
	}
	for _, s := range live {
		if err := c.kill(s, true); err != nil {
			problems = append(problems, err.Error())
		}
	}
	c.mu.Lock()
	problems = append(problems, c.crashes...)
	c.mu.Unlock()
	return finals, problems
}

// runLog opens a run's log, run.log in dir: logf writes a line there, and
// to w if not nil, with the seconds since the run started.
func runLog(dir string, w io.Writer) (logf func(format string, a ...any), closeLog func() error, err error) {
	f, err := os.Create(filepath.Join(dir, "run.log"))
	if err != nil {
		return nil, nil, err
	}
	start := time.Now()
	var mu sync.Mutex
	logf = func(format string, a ...any) {
		mu.Lock()
		defer mu.Unlock()
		line := fmt.Sprintf("%7.1fs  %s\n", time.Since(start).Seconds(), fmt.Sprintf(format, a...))
		f.WriteString(line)
		if w != nil {
			io.WriteString(w, line)
		}
	}
	return logf, f.Close, nil
}
