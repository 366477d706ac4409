package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/godqlite/dqlite/driver"
)

// rowKey identifies a demo row.
type rowKey struct {
	node, run int
	n         int64
}

// proc is one node process.
type proc struct {
	cmd    *exec.Cmd
	run    int
	done   chan struct{} // closed when the process has exited
	killAt time.Time     // when it is to be killed
	downAt time.Time     // when it was killed
}

type supervisor struct {
	o         options
	out       io.Writer
	exe       string
	dirs      []string
	listeners []*net.TCPListener
	files     []*os.File         // the listeners' descriptors, handed to every run of a node
	http      []*net.TCPListener // each node's HTTP API listener
	httpFiles []*os.File
	peers     string
	procs     []*proc
	events    chan event
	readers   sync.WaitGroup

	acked          map[rowKey]bool
	acksThisSecond int
	errors         int
	leader         int
	leaderChanges  int
	kills          int
	snapshots      int
}

func newSupervisor(o options, out io.Writer) (*supervisor, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	s := &supervisor{o: o, out: out, exe: exe, events: make(chan event, 1024), acked: map[rowKey]bool{}}
	var peers []string
	for i := range o.nodes {
		dir := filepath.Join(o.dir, fmt.Sprintf("dqlite-demo-%d", i+1))
		if err := freshDir(dir, out); err != nil {
			return nil, err
		}
		l, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			return nil, err
		}
		f, err := l.File()
		if err != nil {
			return nil, err
		}
		hl, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			return nil, err
		}
		hf, err := hl.File()
		if err != nil {
			return nil, err
		}
		s.dirs = append(s.dirs, dir)
		s.listeners = append(s.listeners, l)
		s.files = append(s.files, f)
		s.http = append(s.http, hl)
		s.httpFiles = append(s.httpFiles, hf)
		peers = append(peers, fmt.Sprintf("%d=%s", i+1, l.Addr()))
	}
	s.peers = strings.Join(peers, ",")
	s.procs = make([]*proc, o.nodes)
	return s, nil
}

func (s *supervisor) logf(format string, a ...any) {
	fmt.Fprintf(s.out, "%s "+format+"\n", append([]any{time.Now().Format("15:04:05.000")}, a...)...)
}

// spawn starts node i (its run-th start).
func (s *supervisor) spawn(i, run int) error {
	cmd := exec.Command(s.exe, nodeFlag, "-id", fmt.Sprint(i+1), "-run", fmt.Sprint(run),
		"-dir", s.dirs[i], "-peers", s.peers)
	cmd.ExtraFiles = []*os.File{s.files[i], s.httpFiles[i]}
	dieWithParent(cmd)
	logFile, err := os.OpenFile(filepath.Join(s.dirs[i], "node.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cmd.Stderr = logFile
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		logFile.Close()
		return err
	}
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return err
	}
	p := &proc{cmd: cmd, run: run, done: make(chan struct{})}
	p.killAt = time.Now().Add(s.o.minLife + rand.N(s.o.maxLife-s.o.minLife+1))
	s.procs[i] = p
	s.readers.Add(1)
	go func() {
		defer s.readers.Done()
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			var ev event
			if json.Unmarshal(sc.Bytes(), &ev) == nil {
				s.events <- ev
			}
		}
		cmd.Wait()
		logFile.Close()
		close(p.done)
	}()
	return nil
}

func (s *supervisor) handle(ev event, acks *int) {
	switch ev.Type {
	case "ack":
		s.acked[rowKey{ev.Node, ev.Run, ev.N}] = true
		*acks++
	case "leader":
		if ev.Node != s.leader {
			if s.leader != 0 {
				s.leaderChanges++
			}
			s.leader = ev.Node
			s.logf("node %d is the leader", ev.Node)
		}
	case "redirect":
		if ev.Leader == 0 {
			s.logf("node %d: no leader to forward writes to: waiting", ev.Node)
		} else {
			s.logf("node %d: no answer from the leader yet (node %d): waiting", ev.Node, ev.Leader)
		}
	case "snapshot":
		s.snapshots++
		s.logf("node %d took snapshot %s", ev.Node, ev.Text)
	case "error":
		s.errors++
		s.logf("node %d: commit %d failed: %s", ev.Node, ev.N, ev.Text)
	case "fatal":
		s.logf("node %d stopped: %s", ev.Node, ev.Text)
	}
}

func (s *supervisor) down() int {
	n := 0
	for _, p := range s.procs {
		if p == nil || !p.downAt.IsZero() {
			n++
		}
	}
	return n
}

// run drives the demo and returns the exit code.
func (s *supervisor) run(ctx context.Context) int {
	if err := s.start(); err != nil {
		s.logf("%v", err)
		s.stopAll()
		return 1
	}
	if !s.pump(ctx, s.o.duration, true) {
		s.logf("interrupted: stopping the nodes; data directories are kept")
		s.stopAll()
		return 130
	}
	s.logf("%v elapsed: stopping the nodes", s.o.duration)
	s.stopAll()
	return s.verify()
}

// start prints where the data goes and starts every node.
func (s *supervisor) start() error {
	fmt.Fprintf(s.out, "dqlite-demo: %d nodes on 127.0.0.1, data in:\n", s.o.nodes)
	for _, d := range s.dirs {
		fmt.Fprintf(s.out, "  %s\n", d)
	}
	pattern := filepath.Join(s.o.dir, "dqlite-demo-*")
	fmt.Fprintf(s.out, "watch them with: watch ls -l %s/ %s/snapshots/\n", pattern, pattern)
	var addrs []string
	for _, l := range s.listeners {
		addrs = append(addrs, l.Addr().String())
	}
	fmt.Fprintf(s.out, "open a shell on the cluster with: go run ./cmd/dqlite %s test.db\n", strings.Join(addrs, ","))
	h := s.http[0].Addr()
	fmt.Fprintf(s.out, "or use node 1's HTTP API: curl -s http://%s/status\n", h)
	fmt.Fprintf(s.out, "  curl -s 'http://%s/db/query?db=test.db&level=linearizable' -H 'Content-Type: application/json' -d '[\"SELECT count(*) FROM test\"]'\n", h)
	fmt.Fprintf(s.out, "  curl -s http://%s/metrics | grep ^dqlite_\n", h)
	for i := range s.o.nodes {
		if err := s.spawn(i, 0); err != nil {
			return fmt.Errorf("cannot start node %d: %w", i+1, err)
		}
		s.logf("node %d started (pid %d)", i+1, s.procs[i].cmd.Process.Pid)
	}
	return nil
}

// pump handles the nodes' events for d, printing the commit rate every
// second and, with chaos, killing and restarting nodes. It reports false
// if ctx ended first.
func (s *supervisor) pump(ctx context.Context, d time.Duration, chaos bool) bool {
	end := time.After(d)
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	status := make(chan string, 1)
	for ticks := 1; ; {
		select {
		case <-ctx.Done():
			return false
		case <-end:
			return true
		case ev := <-s.events:
			s.handle(ev, &s.acksThisSecond)
		case line := <-status:
			s.logf("%s", line)
		case now := <-tick.C:
			s.logf("rows committed/s: %d (acknowledged so far: %d)", s.acksThisSecond, len(s.acked))
			s.acksThisSecond = 0
			if chaos {
				s.chaos(now)
			}
			if ticks++; ticks%5 == 0 {
				go func() {
					select {
					case status <- s.clusterStatus(ctx):
					default:
					}
				}()
			}
		}
	}
}

// clusterStatus describes the cluster in one line, from every member's
// answer to the status request (driver.RemoteCluster, as the dqlite
// shell's .cluster): the leader, each node's role, state, applied index and
// lag behind the leader's.
func (s *supervisor) clusterStatus(ctx context.Context) string {
	var addrs []string
	for _, l := range s.listeners {
		addrs = append(addrs, l.Addr().String())
	}
	sctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	ms, err := driver.RemoteCluster(sctx, nil, addrs)
	if err != nil {
		return "status: " + err.Error()
	}
	head := "no leader"
	var parts []string
	for _, m := range ms {
		if m.Err != nil {
			parts = append(parts, fmt.Sprintf("node %d down", m.ID))
			continue
		}
		role, state, lag := m.Role, "follower", "?"
		if m.Leader {
			state, head = "leader", fmt.Sprintf("leader node %d (term %d)", m.ID, m.Status.Term)
		}
		if role == "spare" {
			state, lag = "idle", "-" // it holds no data
		} else if m.LagKnown {
			lag = strconv.FormatUint(m.Lag, 10)
		}
		parts = append(parts, fmt.Sprintf("node %d %s %s applied %d lag %s", m.ID, role, state, m.Status.AppliedIndex, lag))
	}
	return "status: " + head + "; " + strings.Join(parts, "; ")
}

// kill stops node i with SIGKILL, wherever it is.
func (s *supervisor) kill(i int) {
	p := s.procs[i]
	p.cmd.Process.Kill()
	<-p.done
	p.downAt = time.Now()
	s.kills++
	s.logf("node %d killed (SIGKILL)", i+1)
}

// restart starts node i again after a kill.
func (s *supervisor) restart(i int) error {
	run := s.procs[i].run + 1
	if err := s.spawn(i, run); err != nil {
		return fmt.Errorf("cannot restart node %d: %w", i+1, err)
	}
	s.logf("node %d restarted (run %d, pid %d)", i+1, run, s.procs[i].cmd.Process.Pid)
	return nil
}

// chaos kills nodes whose time has come, keeping a quorum up, and
// restarts those that were down long enough.
func (s *supervisor) chaos(now time.Time) {
	for i, p := range s.procs {
		if !p.downAt.IsZero() {
			if now.Sub(p.downAt) >= s.o.pause {
				if err := s.restart(i); err != nil {
					s.logf("%v", err)
				}
			}
			continue
		}
		if now.After(p.killAt) {
			if s.down() >= (s.o.nodes-1)/2 && s.o.nodes > 1 {
				p.killAt = now.Add(time.Second) // keep a quorum: try later
				continue
			}
			s.kill(i)
		}
	}
}

// stopAll stops every node: SIGTERM, then SIGKILL for a node still up
// after 10s. It drains the events they send meanwhile.
func (s *supervisor) stopAll() {
	for _, p := range s.procs {
		if p != nil && p.downAt.IsZero() {
			terminate(p.cmd.Process)
		}
	}
	deadline := time.After(10 * time.Second)
	var acks int
	for _, p := range s.procs {
		if p == nil {
			continue
		}
		for waiting := true; waiting; {
			select {
			case <-p.done:
				waiting = false
			case ev := <-s.events:
				s.handle(ev, &acks)
			case <-deadline:
				p.cmd.Process.Kill()
			}
		}
	}
	go func() { s.readers.Wait(); close(s.events) }()
	for ev := range s.events {
		s.handle(ev, &acks)
	}
	for _, f := range s.files {
		f.Close()
	}
}

// demoMarker marks a directory the demo created, which a later run may
// delete.
const demoMarker = ".dqlite-demo"

// freshDir makes dir an empty data directory. It deletes only what an
// earlier run of the demo left there, and says so; any other non-empty
// directory is an error.
func freshDir(dir string, out io.Writer) error {
	entries, err := os.ReadDir(dir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return err
	case len(entries) == 0:
	default:
		if _, err := os.Stat(filepath.Join(dir, demoMarker)); err != nil {
			return fmt.Errorf("%s holds files the demo did not create: choose another -dir", dir)
		}
		fmt.Fprintf(out, "removing %s, left by an earlier run of the demo\n", dir)
		if err := os.RemoveAll(dir); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, demoMarker), nil, 0o644)
}
