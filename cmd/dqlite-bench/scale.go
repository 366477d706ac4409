package main

import (
	"bufio"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/godqlite/dqlite"
	"github.com/godqlite/dqlite/cmd/dqlite-bench/workload"
)

// The scale workload: how the cost of keeping a node healthy grows with
// its database. For each size, a cluster of three node processes is
// loaded to that size, then measured: 1-row inserts while snapshots are
// taken, bytes written to disk per commit, snapshot time and size, the
// restart of a follower and of the leader (each killed with SIGKILL) to
// serving reads, adding a fourth node (and the leader's inserts meanwhile),
// and each process's peak memory.

// scaleNodeFlag, as the first argument, runs the binary as a node of the
// scale workload's cluster.
const scaleNodeFlag = "-scale-node"

// scaleCmd is a command to a scale node, one JSON line each.
type scaleCmd struct {
	Cmd      string            `json:"cmd"` // status, bulk, insert, add, ready
	Bytes    int64             `json:"bytes,omitempty"`
	Workload workload.Workload `json:"workload"`
	ID       int               `json:"id,omitempty"`
	Addr     string            `json:"addr,omitempty"`
	Rows     int64             `json:"rows,omitempty"`
}

type scaleReply struct {
	Leader   bool            `json:"leader"`
	Applied  uint64          `json:"applied"`
	Rows     int64           `json:"rows"`
	DBBytes  int64           `json:"db_bytes"`
	RSS      int64           `json:"rss"`
	PeakRSS  int64           `json:"peak_rss"`
	Result   workload.Result `json:"result"`
	Err      string          `json:"err,omitempty"`
	Duration time.Duration   `json:"duration"`
}

// runScaleNode is a node of the scale workload's cluster.
func runScaleNode(args []string) int {
	node, dir, err := startNode("scale-node", args, "",
		slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo})))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fail := func(err error) int {
		fmt.Fprintf(os.Stderr, "scale node %d: %v\n", node.ID(), err)
		return 1
	}
	defer node.Close()
	ctx := context.Background()
	var db *sql.DB
	open := func() error {
		if db != nil {
			return nil
		}
		// Briefly: before the leader creates it, a follower has no
		// database to open, and status must not wait for one.
		octx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		d, err := node.Open(octx, "bench.db")
		if err != nil {
			return err
		}
		db = d
		return nil
	}
	var nextID atomic.Int64
	enc := json.NewEncoder(os.Stdout)
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		var c scaleCmd
		var r scaleReply
		if err := json.Unmarshal(sc.Bytes(), &c); err != nil {
			return fail(err)
		}
		start := time.Now()
		var err error
		switch c.Cmd {
		case "status":
			r.Leader = node.IsLeader()
			r.Applied = node.AppliedIndex()
			r.RSS, r.PeakRSS = selfRSS()
			if open() == nil {
				db.QueryRowContext(ctx, `SELECT count(*) FROM bench`).Scan(&r.Rows)
				for _, s := range []string{"", "-wal"} {
					if st, err := os.Stat(filepath.Join(dir, "bench.db"+s)); err == nil {
						r.DBBytes += st.Size()
					}
				}
			}
		case "bulk":
			if err = open(); err == nil {
				err = bulkLoad(ctx, db, c.Bytes)
			}
		case "insert":
			if err = open(); err == nil {
				var id int64
				if id, err = workload.MaxID(db)(ctx); err == nil {
					nextID.Store(id)
					r.Result = workload.Run(ctx, c.Workload, workload.SQLOps(db, func(error) bool { return false }, nil), &nextID)
				}
			}
		case "add":
			err = node.AddVoter(ctx, dqlite.NodeID(c.ID), c.Addr)
		case "remove":
			err = node.RemoveNode(ctx, dqlite.NodeID(c.ID))
		case "ready":
			// Serving reads: the database open and holding at least
			// c.Rows rows (the restarted node may still be catching up).
			for {
				if err = open(); err == nil {
					err = db.QueryRowContext(ctx, `SELECT count(*) FROM bench`).Scan(&r.Rows)
				}
				if err == nil && r.Rows >= c.Rows {
					break
				}
				time.Sleep(time.Millisecond)
			}
		default:
			err = fmt.Errorf("unknown command %q", c.Cmd)
		}
		r.Duration = time.Since(start)
		if err != nil {
			r.Err = err.Error()
		}
		if err := enc.Encode(r); err != nil {
			return fail(err)
		}
	}
	return 0
}

// bulkLoad grows the database to size bytes in transactions of 4 MiB.
func bulkLoad(ctx context.Context, db *sql.DB, size int64) error {
	if _, err := db.ExecContext(ctx, workload.Schema+`; CREATE TABLE IF NOT EXISTS bulk (id INTEGER PRIMARY KEY, b BLOB)`); err != nil {
		return err
	}
	for {
		var pages, pageSize int64
		if err := db.QueryRowContext(ctx, `SELECT page_count, page_size FROM pragma_page_count, pragma_page_size`).Scan(&pages, &pageSize); err != nil {
			return err
		}
		if pages*pageSize >= size {
			return nil
		}
		if _, err := db.ExecContext(ctx, `INSERT INTO bulk (b) SELECT randomblob(65536) FROM generate_series(1, 64)`); err != nil {
			return err
		}
	}
}

// scaleAgent is a scale node process.
type scaleAgent struct {
	id   int
	dir  string
	addr string
	f    *os.File // its listener, kept across restarts
	cmd  *exec.Cmd
	in   io.WriteCloser
	out  *bufio.Scanner
	log  *os.File
	peak int64 // largest peak RSS of its processes so far
}

func (a *scaleAgent) start(exe, peers, logStore string) error {
	cmd := exec.Command(exe, scaleNodeFlag, "-id", strconv.Itoa(a.id), "-dir", a.dir, "-peers", peers, "-logstore", logStore)
	cmd.ExtraFiles = []*os.File{a.f}
	dieWithParent(cmd)
	cmd.Stderr = a.log
	in, err := cmd.StdinPipe()
	if err != nil {
		return err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return err
	}
	a.cmd, a.in = cmd, in
	a.out = bufio.NewScanner(out)
	a.out.Buffer(nil, 1<<20)
	return nil
}

func (a *scaleAgent) ask(c scaleCmd) (scaleReply, error) {
	b, _ := json.Marshal(c)
	if _, err := a.in.Write(append(b, '\n')); err != nil {
		return scaleReply{}, err
	}
	if !a.out.Scan() {
		return scaleReply{}, fmt.Errorf("node %d exited: %v", a.id, a.out.Err())
	}
	var r scaleReply
	if err := json.Unmarshal(a.out.Bytes(), &r); err != nil {
		return r, err
	}
	if r.PeakRSS > a.peak {
		a.peak = r.PeakRSS
	}
	if r.Err != "" {
		return r, errors.New(r.Err)
	}
	return r, nil
}

// kill ends the process with SIGKILL, after reading its peak memory.
func (a *scaleAgent) kill() {
	a.ask(scaleCmd{Cmd: "status"})
	a.cmd.Process.Kill()
	a.cmd.Wait()
}

func (a *scaleAgent) stop() {
	if a.cmd == nil {
		return
	}
	a.ask(scaleCmd{Cmd: "status"})
	a.in.Close()
	done := make(chan struct{})
	go func() { a.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		a.cmd.Process.Kill()
		<-done
	}
}

// scaleResult is what one size measured.
type scaleResult struct {
	Size          int64
	LoadTime      time.Duration
	Insert        workload.Result
	Snapshots     int
	SnapshotTime  time.Duration // longest
	SnapshotPages int64         // most pages one stored
	BytesPerTx    float64       // written to disk per commit per node; 0: unknown
	RestartFollow time.Duration
	RestartLeader time.Duration
	AddNode       time.Duration
	InsertDuring  float64 // leader's tx/s while the new node was installed
	PeakRSS       []int64
}

// runScale measures each size in turn with a fresh cluster.
func runScale(ctx context.Context, sizes []int64, d time.Duration, dir, logStore string, stdout, stderr io.Writer) int {
	var results []scaleResult
	for _, size := range sizes {
		sdir := filepath.Join(dir, fmt.Sprintf("scale-%d", size))
		r, err := scaleOnce(ctx, size, d, sdir, logStore, stderr)
		os.RemoveAll(sdir)
		if err != nil {
			fmt.Fprintf(stderr, "scale %s: %v\n", formatSize(size), err)
			return 1
		}
		results = append(results, r)
	}
	printScale(stdout, results, logStore)
	return 0
}

func scaleOnce(ctx context.Context, size int64, d time.Duration, dir, logStore string, log io.Writer) (res scaleResult, err error) {
	res.Size = size
	logf := func(format string, a ...any) {
		fmt.Fprintf(log, "scale %s: %s\n", formatSize(size), fmt.Sprintf(format, a...))
	}
	exe, err := os.Executable()
	if err != nil {
		return res, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return res, err
	}
	agents := make([]*scaleAgent, 4)
	var peers []string
	for i := range agents {
		l, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			return res, err
		}
		f, err := l.File()
		l.Close()
		if err != nil {
			return res, err
		}
		lf, err := os.Create(filepath.Join(dir, fmt.Sprintf("node%d.log", i+1)))
		if err != nil {
			return res, err
		}
		agents[i] = &scaleAgent{id: i + 1, dir: filepath.Join(dir, fmt.Sprintf("node%d", i+1)), addr: l.Addr().String(), f: f, log: lf}
		if i < 3 {
			peers = append(peers, fmt.Sprintf("%d=%s", i+1, l.Addr()))
		}
	}
	defer func() {
		for _, a := range agents {
			a.stop()
			a.f.Close()
			a.log.Close()
		}
	}()
	for _, a := range agents[:3] {
		if err := a.start(exe, strings.Join(peers, ","), logStore); err != nil {
			return res, err
		}
	}
	leader := func() (*scaleAgent, error) {
		for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
			for _, a := range agents {
				if a.stopped() {
					continue
				}
				if r, err := a.ask(scaleCmd{Cmd: "status"}); err == nil && r.Leader {
					return a, nil
				}
			}
		}
		return nil, errors.New("no leader within 60s")
	}
	l, err := leader()
	if err != nil {
		return res, err
	}
	logf("loading %s", formatSize(size))
	start := time.Now()
	if _, err := l.ask(scaleCmd{Cmd: "bulk", Bytes: size}); err != nil {
		return res, fmt.Errorf("bulk load: %w", err)
	}
	res.LoadTime = time.Since(start)
	logf("loaded in %v", res.LoadTime.Round(time.Millisecond))
	caughtUp := func(members []*scaleAgent, want uint64) error {
		for deadline := time.Now().Add(10 * time.Minute); ; time.Sleep(20 * time.Millisecond) {
			done := true
			for _, a := range members {
				if r, err := a.ask(scaleCmd{Cmd: "status"}); err != nil || r.Applied < want {
					done = false
				}
			}
			if done {
				return nil
			}
			if time.Now().After(deadline) {
				return errors.New("nodes did not catch up within 10 minutes")
			}
		}
	}
	st, err := l.ask(scaleCmd{Cmd: "status"})
	if err != nil {
		return res, err
	}
	if err := caughtUp(agents[:3], st.Applied); err != nil {
		return res, err
	}

	logf("inserting for %v", d)
	windowStart := time.Now()
	before, devOK := deviceWrites(dir)
	r, err := l.ask(scaleCmd{Cmd: "insert", Workload: workload.Workload{Kind: "insert", Clients: 1, Duration: d}})
	if err != nil {
		return res, err
	}
	res.Insert = r.Result
	if err := caughtUp(agents[:3], 0); err != nil {
		return res, err
	}
	if after, ok := deviceWrites(dir); ok && devOK && r.Result.Ops > 0 {
		res.BytesPerTx = float64(after-before) / float64(r.Result.Ops) / 3
	}
	res.Snapshots, res.SnapshotTime, res.SnapshotPages = snapshotsSince(agents[:3], windowStart)
	logf("%.0f tx/s, p99 %.1f ms, %d snapshots", r.Result.OpsPerS, r.Result.P99Ms, res.Snapshots)

	// Restart a follower, then the leader, each killed with SIGKILL.
	restart := func(a *scaleAgent) (time.Duration, error) {
		st, err := a.ask(scaleCmd{Cmd: "status"})
		if err != nil {
			return 0, err
		}
		a.kill()
		start := time.Now()
		if err := a.start(exe, strings.Join(peers, ","), logStore); err != nil {
			return 0, err
		}
		if _, err := a.ask(scaleCmd{Cmd: "ready", Rows: st.Rows}); err != nil {
			return 0, err
		}
		return time.Since(start), nil
	}
	follower := agents[0]
	if follower == l {
		follower = agents[1]
	}
	if res.RestartFollow, err = restart(follower); err != nil {
		return res, fmt.Errorf("restart follower: %w", err)
	}
	if res.RestartLeader, err = restart(l); err != nil {
		return res, fmt.Errorf("restart leader: %w", err)
	}
	logf("restart to serving: follower %v, leader %v", res.RestartFollow.Round(time.Millisecond), res.RestartLeader.Round(time.Millisecond))

	// Replace a follower by a new node (the disk need not hold a fourth
	// copy); the leader inserts meanwhile.
	if l, err = leader(); err != nil {
		return res, err
	}
	gone := agents[0]
	if gone == l {
		gone = agents[1]
	}
	gone.kill()
	gone.cmd = nil
	if err := os.RemoveAll(gone.dir); err != nil {
		return res, err
	}
	if _, err := l.ask(scaleCmd{Cmd: "remove", ID: gone.id}); err != nil {
		return res, fmt.Errorf("remove node %d: %w", gone.id, err)
	}
	st, err = l.ask(scaleCmd{Cmd: "status"})
	if err != nil {
		return res, err
	}
	newNode := agents[3]
	if err := newNode.start(exe, "", logStore); err != nil {
		return res, err
	}
	start = time.Now()
	if _, err := l.ask(scaleCmd{Cmd: "add", ID: newNode.id, Addr: newNode.addr}); err != nil {
		return res, fmt.Errorf("add node: %w", err)
	}
	installed := make(chan error, 1)
	go func() {
		for deadline := time.Now().Add(30 * time.Minute); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
			r, err := newNode.ask(scaleCmd{Cmd: "status"})
			if err == nil && r.Applied >= st.Applied {
				installed <- nil
				return
			}
		}
		installed <- errors.New("the new node did not catch up within 30 minutes")
	}()
	var ops int64
	var busy time.Duration
	for done := false; !done; {
		r, err := l.ask(scaleCmd{Cmd: "insert", Workload: workload.Workload{Kind: "insert", Clients: 1, Duration: time.Second}})
		if err != nil {
			return res, err
		}
		select {
		case err := <-installed:
			if err != nil {
				return res, err
			}
			res.AddNode = time.Since(start)
			done = true
		default:
			// A slice that ran entirely during the install.
			ops += r.Result.Ops
			busy += time.Second
		}
	}
	if busy > 0 {
		res.InsertDuring = float64(ops) / busy.Seconds()
	}
	logf("new node caught up in %v; leader %.0f tx/s meanwhile", res.AddNode.Round(time.Millisecond), res.InsertDuring)
	for _, a := range agents {
		a.stop()
		res.PeakRSS = append(res.PeakRSS, a.peak)
		a.cmd = nil
	}
	return res, nil
}

// stopped reports whether the agent's process is gone.
func (a *scaleAgent) stopped() bool {
	return a.cmd == nil || a.cmd.ProcessState != nil
}

// snapshotsSince counts the snapshots the nodes logged since t: how many,
// the longest, the most pages one stored.
func snapshotsSince(agents []*scaleAgent, t time.Time) (n int, longest time.Duration, pages int64) {
	for _, a := range agents {
		b, err := os.ReadFile(a.log.Name())
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			if !strings.Contains(line, `"snapshot taken"`) {
				continue
			}
			var e struct {
				Time  time.Time `json:"time"`
				Pages int64     `json:"pages"`
				Took  string    `json:"took"`
			}
			if json.Unmarshal([]byte(line), &e) != nil || e.Time.Before(t) {
				continue
			}
			n++
			if d, err := time.ParseDuration(e.Took); err == nil && d > longest {
				longest = d
			}
			pages = max(pages, e.Pages)
		}
	}
	return n, longest, pages
}

func formatSize(n int64) string {
	switch {
	case n >= 1<<30 && n%(1<<30) == 0:
		return fmt.Sprintf("%dGiB", n>>30)
	case n >= 1<<20:
		return fmt.Sprintf("%dMiB", n>>20)
	}
	return fmt.Sprintf("%dB", n)
}

// parseSize reads sizes like 10MiB, 1GiB, 512KiB or a number of bytes.
func parseSize(s string) (int64, error) {
	units := []struct {
		suffix string
		mult   int64
	}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}, {"G", 1 << 30}, {"M", 1 << 20}, {"K", 1 << 10}}
	for _, u := range units {
		if v, ok := strings.CutSuffix(s, u.suffix); ok {
			n, err := strconv.ParseFloat(v, 64)
			if err != nil || n <= 0 {
				return 0, fmt.Errorf("size %q", s)
			}
			return int64(n * float64(u.mult)), nil
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("size %q: want a number of bytes or 10MiB, 1GiB", s)
	}
	return n, nil
}

func printScale(w io.Writer, rs []scaleResult, logStore string) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	line := func(name string, f func(r scaleResult) string) {
		s := name + "\t"
		for _, r := range rs {
			s += f(r) + "\t"
		}
		fmt.Fprintln(tw, s)
	}
	line("database size", func(r scaleResult) string { return formatSize(r.Size) })
	line("bulk load", func(r scaleResult) string { return r.LoadTime.Round(time.Millisecond).String() })
	line("insert/1 tx/s with snapshots", func(r scaleResult) string {
		return fmt.Sprintf("%.0f (%.2fx)", r.Insert.OpsPerS, r.Insert.OpsPerS/rs[0].Insert.OpsPerS)
	})
	line("insert/1 p50 / p99 ms", func(r scaleResult) string { return fmt.Sprintf("%.2f / %.2f", r.Insert.P50Ms, r.Insert.P99Ms) })
	line("snapshots during inserts", func(r scaleResult) string { return strconv.Itoa(r.Snapshots) })
	line("longest snapshot", func(r scaleResult) string { return r.SnapshotTime.String() })
	line("most pages in a snapshot", func(r scaleResult) string { return strconv.FormatInt(r.SnapshotPages, 10) })
	line("disk bytes per commit per node", func(r scaleResult) string {
		if r.BytesPerTx == 0 {
			return "n/a"
		}
		return fmt.Sprintf("%.0f", r.BytesPerTx)
	})
	line("restart to serving, follower", func(r scaleResult) string { return r.RestartFollow.Round(time.Millisecond).String() })
	line("restart to serving, leader", func(r scaleResult) string { return r.RestartLeader.Round(time.Millisecond).String() })
	line("replace a node, until caught up", func(r scaleResult) string { return r.AddNode.Round(time.Millisecond).String() })
	line("leader insert/1 tx/s meanwhile", func(r scaleResult) string {
		if r.InsertDuring == 0 {
			return "n/a (install under 1s)"
		}
		return fmt.Sprintf("%.0f (%.2fx)", r.InsertDuring, r.InsertDuring/r.Insert.OpsPerS)
	})
	line("peak RSS per node, MiB", func(r scaleResult) string {
		var s []string
		for _, p := range r.PeakRSS {
			s = append(s, strconv.FormatInt(p>>20, 10))
		}
		return strings.Join(s, " ")
	})
	tw.Flush()
	store := logStore
	if store == "" {
		store = "default"
	}
	fmt.Fprintf(w, "\n3 node processes, Raft log %s; restarts after SIGKILL; a follower replaced by a 4th, empty node; disk bytes from the block device's counters (all writers on it).\n", store)
}
