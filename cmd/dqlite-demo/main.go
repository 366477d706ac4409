// Command dqlite-demo shows what dqlite is for, in one command.
//
// It spawns three node processes (this binary, re-executed) that form a
// cluster on 127.0.0.1. Each node inserts rows through its own *sql.DB in
// multi-statement transactions; nodes that are not the leader wait for
// it. Every node is killed with SIGKILL at random moments, often in the
// middle of a transaction, and restarted after a pause. At the end the
// demo stops the nodes, reopens every data directory and checks that
// every acknowledged insert is on every node, that the databases are
// identical and intact, and prints one "converged:" line.
//
//	go run ./cmd/dqlite-demo [-duration 60s] [-nodes 3] [-dir /tmp]
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == nodeFlag {
		os.Exit(runNode(os.Args[2:], os.Stdout))
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

// options of a demo run.
type options struct {
	duration time.Duration
	nodes    int
	dir      string
	minLife  time.Duration // a node lives at least this long before it is killed
	maxLife  time.Duration
	pause    time.Duration // how long a killed node stays down
}

// run is the demo, as a function so that a test can drive it. It returns
// the exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("dqlite-demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	o := options{}
	fs.DurationVar(&o.duration, "duration", 60*time.Second, "how long the nodes insert and die before the final check")
	fs.IntVar(&o.nodes, "nodes", 3, "number of nodes")
	fs.StringVar(&o.dir, "dir", os.TempDir(), "where the data directories dqlite-demo-N are created (those of an earlier run are deleted first)")
	fs.DurationVar(&o.minLife, "min-life", 4*time.Second, "shortest time a node runs before it is killed")
	fs.DurationVar(&o.maxLife, "max-life", 12*time.Second, "longest time a node runs before it is killed")
	fs.DurationVar(&o.pause, "pause", 1500*time.Millisecond, "how long a killed node stays down")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	var problems []error
	if o.nodes < 1 || o.nodes > 9 {
		problems = append(problems, fmt.Errorf("-nodes %d: must be 1 to 9", o.nodes))
	}
	if o.duration <= 0 {
		problems = append(problems, fmt.Errorf("-duration %v: must be positive", o.duration))
	}
	if o.minLife <= 0 || o.maxLife < o.minLife {
		problems = append(problems, fmt.Errorf("-min-life %v, -max-life %v: need 0 < min <= max", o.minLife, o.maxLife))
	}
	if err := errors.Join(problems...); err != nil {
		fmt.Fprintln(stderr, err)
		return 2
	}
	s, err := newSupervisor(o, stdout)
	if err != nil {
		fmt.Fprintln(stderr, "dqlite-demo:", err)
		return 1
	}
	return s.run(ctx)
}
