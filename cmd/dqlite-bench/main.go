// Command dqlite-bench measures this project beside plain SQLite, dqlite
// and rqlite, in one run, with the same schema and keys for every system.
//
//	go run ./cmd/dqlite-bench [-duration 5s] [-workloads insert/1,insert/8,batch/1,read/1,read/8,linread/1]
//	                          [-systems dqlite-go,dqlite-go/follower,dqlite-go/remote,sqlite-full,sqlite-normal,dqlite,rqlite] [-nodes 3]
//	                          [-logstore wal|bolt] [-json]
//
//	go run ./cmd/dqlite-bench -workloads scale -size 1GiB [-duration 60s]
//
// Workloads: insert (1-row INSERT transactions), batch (100-row
// transactions), read (point SELECT by primary key over 10k rows), linread
// (the same read at the system's linearizable level: n/a where it has
// none), each with N concurrent clients. This project runs three ways:
// on the leader's *sql.DB (dqlite-go), on a follower's (writes forwarded),
// and as a remote client from the benchmark's process. Peers are used when their programs are on
// PATH (rqlited; dqlite-demo of go-dqlite v1.11); a missing peer is
// skipped with a line saying how to install it.
//
// The scale workload measures this project alone, at 10 MiB and at -size:
// see scale.go.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/godqlite/dqlite/cmd/dqlite-bench/workload"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == nodeFlag {
		os.Exit(runNode(os.Args[2:]))
	}
	if len(os.Args) > 1 && os.Args[1] == scaleNodeFlag {
		os.Exit(runScaleNode(os.Args[2:]))
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	os.Exit(mainErr(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

// report is the -json output.
type report struct {
	Systems []systemReport `json:"systems"`
	Skipped []string       `json:"skipped,omitempty"`
}

type systemReport struct {
	Name       string            `json:"name"`
	Durability string            `json:"durability"`
	Results    []workload.Result `json:"results"`
	Err        string            `json:"error,omitempty"`
}

func parseWorkloads(s string, d time.Duration) ([]workload.Workload, error) {
	var ws []workload.Workload
	for _, f := range strings.Split(s, ",") {
		kind, clients, ok := strings.Cut(strings.TrimSpace(f), "/")
		n, err := strconv.Atoi(clients)
		if !ok || err != nil || n < 1 || (kind != "insert" && kind != "batch" && kind != "read" && kind != "linread") {
			return nil, fmt.Errorf("workload %q: want insert/N, batch/N, read/N or linread/N", f)
		}
		ws = append(ws, workload.Workload{Kind: kind, Clients: n, Duration: d})
	}
	return ws, nil
}

func allSystems(nodes int, logStore string) []System {
	return []System{
		&thisProject{nodes: nodes, logStore: logStore},
		&thisProject{nodes: nodes, logStore: logStore, via: "follower"},
		&thisProject{nodes: nodes, logStore: logStore, via: "remote"},
		&clientSystem{opsStarter: &localSQLite{sync: "full"}},
		&clientSystem{opsStarter: &localSQLite{sync: "normal"}},
		&dqlitePeer{nodes: nodes},
		&clientSystem{opsStarter: &rqlite{nodes: nodes}},
	}
}

func isPeer(name string) bool { return name == "dqlite" || name == "rqlite" }

func mainErr(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("dqlite-bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	duration := fs.Duration("duration", 5*time.Second, "how long each workload runs")
	workloads := fs.String("workloads", "insert/1,insert/8,batch/1,read/1,read/8,linread/1", "workloads to run, kind/clients")
	systems := fs.String("systems", "dqlite-go,dqlite-go/follower,dqlite-go/remote,sqlite-full,sqlite-normal,dqlite,rqlite", "systems to measure")
	nodes := fs.Int("nodes", 3, "nodes per replicated system")
	asJSON := fs.Bool("json", false, "print JSON instead of a table")
	logStore := fs.String("logstore", "wal", "this project's Raft log store: wal (the default of dqlite.Config) or bolt")
	dir := fs.String("dir", "", "where data goes (default: a temporary directory, removed afterwards)")
	size := fs.String("size", "1GiB", "the scale workload's database size, measured beside 10MiB")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *workloads == "scale" {
		sz, err := parseSize(*size)
		if err != nil {
			fmt.Fprintln(stderr, err)
			return 2
		}
		d := 60 * time.Second // long enough for several snapshots at the defaults
		fs.Visit(func(f *flag.Flag) {
			if f.Name == "duration" {
				d = *duration
			}
		})
		if *dir == "" {
			t, err := os.MkdirTemp("", "dqlite-bench-")
			if err != nil {
				fmt.Fprintln(stderr, err)
				return 1
			}
			defer os.RemoveAll(t)
			*dir = t
		}
		ls := "" // the library's default, unless asked
		fs.Visit(func(f *flag.Flag) {
			if f.Name == "logstore" {
				ls = *logStore
			}
		})
		return runScale(ctx, []int64{10 << 20, sz}, d, *dir, ls, stdout, stderr)
	}
	ws, err := parseWorkloads(*workloads, *duration)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 2
	}
	if *nodes < 1 || *duration <= 0 {
		fmt.Fprintln(stderr, "-nodes and -duration must be positive")
		return 2
	}
	want := map[string]bool{}
	for _, s := range strings.Split(*systems, ",") {
		want[strings.TrimSpace(s)] = true
	}
	if *dir == "" {
		d, err := os.MkdirTemp("", "dqlite-bench-")
		if err != nil {
			fmt.Fprintln(stderr, err)
			return 1
		}
		defer os.RemoveAll(d)
		*dir = d
	}

	var rep report
	for _, sys := range allSystems(*nodes, *logStore) {
		if !want[sys.Name()] {
			continue
		}
		sr := systemReport{Name: sys.Name(), Durability: sys.Durability()}
		fmt.Fprintf(stderr, "%s: starting\n", sys.Name())
		sdir, _ := os.MkdirTemp(*dir, strings.ReplaceAll(sys.Name(), "/", "-")+"-")
		if err := sys.Start(ctx, sdir); err != nil {
			sys.Stop()
			if isPeer(sys.Name()) && errors.Is(err, errNotInstalled) {
				fmt.Fprintf(stderr, "skipping %s: %v\n", sys.Name(), err)
				rep.Skipped = append(rep.Skipped, fmt.Sprintf("%s: %v", sys.Name(), err))
				continue
			}
			sr.Err = err.Error()
			fmt.Fprintf(stderr, "%s: %v\n", sys.Name(), err)
			rep.Systems = append(rep.Systems, sr)
			continue
		}
		for _, w := range ws {
			if ctx.Err() != nil {
				break
			}
			fmt.Fprintf(stderr, "%s: %s for %v...\n", sys.Name(), w, w.Duration)
			r, err := sys.Run(ctx, w)
			if err != nil {
				sr.Err = err.Error()
				fmt.Fprintf(stderr, "%s: %s: %v\n", sys.Name(), w, err)
				break
			}
			if r.Unsupported {
				fmt.Fprintf(stderr, "%s: %s: not supported\n", sys.Name(), w)
				sr.Results = append(sr.Results, r)
				continue
			}
			fmt.Fprintf(stderr, "%s: %s: %.0f ops/s, p50 %.2fms, p99 %.2fms, %d errors, %d retries\n",
				sys.Name(), w, r.OpsPerS, r.P50Ms, r.P99Ms, r.Errors, r.Retries)
			sr.Results = append(sr.Results, r)
		}
		if err := sys.Stop(); err != nil {
			fmt.Fprintf(stderr, "%s: stop: %v\n", sys.Name(), err)
		}
		rep.Systems = append(rep.Systems, sr)
		if ctx.Err() != nil {
			fmt.Fprintln(stderr, "interrupted")
			return 130
		}
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		enc.Encode(rep)
	} else {
		printTable(stdout, rep, ws)
	}
	return 0
}

// printTable shows the systems side by side, then this project's ratio to
// the best peer measured in the same run.
func printTable(w io.Writer, rep report, ws []workload.Workload) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	header := "workload\t"
	for _, s := range rep.Systems {
		header += s.Name + "\t"
	}
	header += "dqlite-go / best peer\t"
	fmt.Fprintln(tw, header)
	for i, wl := range ws {
		line := wl.String() + "\t"
		var ours, bestPeer float64
		for _, s := range rep.Systems {
			if i >= len(s.Results) {
				line += "-\t"
				continue
			}
			r := s.Results[i]
			if r.Unsupported {
				line += "n/a\t"
				continue
			}
			v := r.OpsPerS
			unit := "tx/s"
			if wl.Kind == "batch" {
				v, unit = r.RowsPerS, "rows/s"
			} else if wl.Kind == "read" || wl.Kind == "linread" {
				unit = "reads/s"
			}
			line += fmt.Sprintf("%.0f %s (p50 %.2f p99 %.2f ms", v, unit, r.P50Ms, r.P99Ms)
			if r.Errors > 0 || r.Retries > 0 {
				line += fmt.Sprintf(", %d err, %d retries", r.Errors, r.Retries)
			}
			line += ")\t"
			if s.Name == "dqlite-go" {
				ours = v
			}
			if isPeer(s.Name) && v > bestPeer {
				bestPeer = v
			}
		}
		if ours > 0 && bestPeer > 0 {
			line += fmt.Sprintf("%.2fx\t", ours/bestPeer)
		} else {
			line += "-\t"
		}
		fmt.Fprintln(tw, line)
	}
	tw.Flush()
	fmt.Fprintln(w)
	for _, s := range rep.Systems {
		fmt.Fprintf(w, "%s: %s\n", s.Name, s.Durability)
		if s.Err != "" {
			fmt.Fprintf(w, "  error: %s\n", s.Err)
		}
	}
	for _, s := range rep.Skipped {
		fmt.Fprintf(w, "skipped %s\n", s)
	}
}
