// Command dqlite-torture runs dqlite's fault-injection suite for as long as
// you like: a cluster of node processes on 127.0.0.1 under workloads while
// a nemesis partitions the network, kills and pauses nodes, fills and
// breaks their disks and changes the membership; then it checks the
// clients' history against what every node holds.
//
//	go run ./cmd/dqlite-torture -duration 10m -nemesis all -workload all -seed 1
//
// It prints the faults as they happen and one result line per workload:
//
//	set      ops=… ok=… failed=… unknown=… lost=0 divergent=0 linearizable=n/a PASS
//
// and exits 1 if any workload failed. A failing run's directory (node
// logs, run.log, the register history) is kept; -keep keeps every run's.
// The same seed replays the same schedule of faults.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/godqlite/dqlite/internal/torture"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == torture.NodeFlag {
		os.Exit(torture.NodeMain(os.Args[2:]))
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

// list parses a flag of names, "all" or "none".
func list(s string, all []string) []string {
	switch s {
	case "all":
		return all
	case "none", "":
		return nil
	}
	return strings.Split(s, ",")
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("dqlite-torture", flag.ContinueOnError)
	fs.SetOutput(stderr)
	o := torture.Options{}
	fs.DurationVar(&o.Duration, "duration", 2*time.Minute, "how long the workloads run under faults before the final check")
	nem := fs.String("nemesis", "all", "faults: all, none, or a comma-separated list of "+strings.Join(torture.Nemeses, ", "))
	wl := fs.String("workload", "all", "workloads: all, or a comma-separated list of "+strings.Join(torture.Workloads, ", "))
	fs.Int64Var(&o.Seed, "seed", 0, "seed of the fault schedule and the clients (0: from the clock; printed)")
	fs.IntVar(&o.Nodes, "nodes", 5, "voters at the start (3 to 7)")
	fs.IntVar(&o.Clients, "clients", 3, "clients per workload")
	fs.StringVar(&o.Dir, "dir", "", "run directory (default: dqlite-torture-SEED in the temporary directory; replaced if it exists)")
	fs.BoolVar(&o.Keep, "keep", false, "keep the run directory even when every workload passed")
	fs.BoolVar(&o.AnyNode, "any-node", false, "clients send requests to any node (followers forward writes; register reads are linearizable reads there), not to the leader")
	fs.BoolVar(&o.LocalReads, "local-reads", false, "register reads each node's own copy: the negative control, which must fail the linearizability check")
	fs.StringVar(&o.LogStore, "logstore", "", "the nodes' Raft log store, bolt or wal (default: chosen by the seed)")
	fs.DurationVar(&o.CheckTimeout, "check-timeout", 5*time.Minute, "how long the linearizability check may take")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "dqlite-torture: unexpected arguments %q\n", fs.Args())
		return 2
	}
	if o.Duration <= 0 {
		fmt.Fprintln(stderr, "dqlite-torture: -duration must be positive")
		return 2
	}
	if o.Seed == 0 {
		o.Seed = time.Now().UnixNano() % 1_000_000
	}
	if o.LogStore == "" {
		o.LogStore = []string{"bolt", "wal"}[(o.Seed%2+2)%2]
	}
	o.Nemeses, o.Workloads = list(*nem, torture.Nemeses), list(*wl, torture.Workloads)
	if o.Dir == "" {
		o.Dir = filepath.Join(os.TempDir(), fmt.Sprintf("dqlite-torture-%d", o.Seed))
	}
	if err := os.RemoveAll(o.Dir); err != nil {
		fmt.Fprintln(stderr, "dqlite-torture:", err)
		return 1
	}
	exe, err := os.Executable()
	if err != nil {
		fmt.Fprintln(stderr, "dqlite-torture:", err)
		return 1
	}
	o.Exe = []string{exe}
	o.Log = stdout
	results, err := torture.Run(ctx, o)
	if err != nil {
		fmt.Fprintln(stderr, "dqlite-torture:", err)
		fmt.Fprintln(stderr, "dqlite-torture: the run directory is kept:", o.Dir)
		return 1
	}
	pass := true
	fmt.Fprintf(stdout, "\nresults (seed %d, %v, nemesis %s, logstore %s):\n", o.Seed, o.Duration, *nem, o.LogStore)
	for _, r := range results {
		fmt.Fprintln(stdout, r)
		pass = pass && r.Pass()
	}
	if pass && !o.Keep {
		os.RemoveAll(o.Dir)
		return 0
	}
	fmt.Fprintln(stdout, "run directory kept:", o.Dir)
	if !pass {
		return 1
	}
	return 0
}
