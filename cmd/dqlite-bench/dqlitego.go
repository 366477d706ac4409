package main

import (
	"bufio"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/godqlite/dqlite"
)

// nodeFlag, as the first argument, runs the binary as a node of this
// project's cluster: an agent that runs workloads on its own *sql.DB when
// the benchmark asks, as an application embedding the library would.
const nodeFlag = "-node"

// command is what the benchmark sends an agent, one JSON line each.
type command struct {
	Cmd      string   `json:"cmd"` // leader, prepare, run
	Workload Workload `json:"workload"`
}

// reply is an agent's answer.
type reply struct {
	Leader bool   `json:"leader"`
	Result Result `json:"result"`
	Err    string `json:"err,omitempty"`
}

// thisProject is a 3-node cluster of this library, each node its own
// process, like the peers' nodes.
type thisProject struct {
	nodes  int
	agents []*agent
	leader *agent
}

type agent struct {
	cmd *exec.Cmd
	in  io.WriteCloser
	out *bufio.Scanner
}

func (a *agent) ask(c command) (reply, error) {
	b, _ := json.Marshal(c)
	if _, err := a.in.Write(append(b, '\n')); err != nil {
		return reply{}, err
	}
	if !a.out.Scan() {
		return reply{}, fmt.Errorf("agent exited: %v", a.out.Err())
	}
	var r reply
	if err := json.Unmarshal(a.out.Bytes(), &r); err != nil {
		return reply{}, err
	}
	if r.Err != "" {
		return r, errors.New(r.Err)
	}
	return r, nil
}

func (p *thisProject) Name() string { return "dqlite-go" }

func (p *thisProject) Durability() string {
	return fmt.Sprintf("%d processes; Raft log (BoltDB) fsynced on every commit, quorum of %d", p.nodes, p.nodes/2+1)
}

func (p *thisProject) Start(ctx context.Context, dir string) error {
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	var files []*os.File
	var peers []string
	for i := range p.nodes {
		l, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			return err
		}
		f, err := l.File()
		l.Close()
		if err != nil {
			return err
		}
		files = append(files, f)
		peers = append(peers, fmt.Sprintf("%d=%s", i+1, l.Addr()))
	}
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	for i := range p.nodes {
		cmd := exec.Command(exe, nodeFlag, "-id", strconv.Itoa(i+1), "-dir", filepath.Join(dir, fmt.Sprint("node", i+1)),
			"-peers", strings.Join(peers, ","))
		cmd.ExtraFiles = []*os.File{files[i]}
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		cmd.Stderr = os.Stderr
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
		sc := bufio.NewScanner(out)
		sc.Buffer(nil, 1<<20)
		p.agents = append(p.agents, &agent{cmd: cmd, in: in, out: sc})
	}
	for deadline := time.Now().Add(30 * time.Second); p.leader == nil; {
		if time.Now().After(deadline) {
			return errors.New("no leader after 30s")
		}
		for _, a := range p.agents {
			if r, err := a.ask(command{Cmd: "leader"}); err == nil && r.Leader {
				p.leader = a
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	_, err = p.leader.ask(command{Cmd: "prepare"})
	return err
}

func (p *thisProject) Run(ctx context.Context, w Workload) (Result, error) {
	r, err := p.leader.ask(command{Cmd: "run", Workload: w})
	return r.Result, err
}

func (p *thisProject) Stop() error {
	for _, a := range p.agents {
		a.in.Close() // the agent closes its node and exits
	}
	var errList []error
	for _, a := range p.agents {
		done := make(chan error, 1)
		go func() { done <- a.cmd.Wait() }()
		select {
		case err := <-done:
			errList = append(errList, err)
		case <-time.After(10 * time.Second):
			a.cmd.Process.Kill()
			errList = append(errList, <-done)
		}
	}
	return errors.Join(errList...)
}

// runNode is an agent: a node that answers the benchmark's commands.
func runNode(args []string) int {
	fs := flag.NewFlagSet("node", flag.ContinueOnError)
	id := fs.Int("id", 0, "node ID")
	dir := fs.String("dir", "", "data directory")
	peerList := fs.String("peers", "", "id=address,...")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	fail := func(err error) int {
		fmt.Fprintf(os.Stderr, "node %d: %v\n", *id, err)
		return 1
	}
	var peers []dqlite.Peer
	for _, p := range strings.Split(*peerList, ",") {
		pid, addr, _ := strings.Cut(p, "=")
		n, _ := strconv.Atoi(pid)
		peers = append(peers, dqlite.Peer{ID: dqlite.NodeID(n), Address: addr})
	}
	l, err := net.FileListener(os.NewFile(3, "raft-listener"))
	if err != nil {
		return fail(err)
	}
	node, err := dqlite.New(dqlite.Config{ID: dqlite.NodeID(*id), Address: l.Addr().String(), Listener: l,
		Dir: *dir, Cluster: peers})
	if err != nil {
		return fail(err)
	}
	defer node.Close()
	ctx := context.Background()
	var db *sql.DB
	var nextID atomic.Int64
	enc := json.NewEncoder(os.Stdout)
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		var c command
		var r reply
		if err := json.Unmarshal(sc.Bytes(), &c); err != nil {
			return fail(err)
		}
		switch c.Cmd {
		case "leader":
			r.Leader = node.IsLeader()
		case "prepare":
			db, err = node.Open(ctx, "bench.db")
			if err == nil {
				_, err = db.ExecContext(ctx, schema)
			}
			if err == nil {
				err = prefill(ctx, sqlOps(db, func(error) bool { return false }), &nextID)
			}
		case "run":
			if db == nil {
				err = errors.New("not prepared")
				break
			}
			var maxID int64
			if err = db.QueryRowContext(ctx, `SELECT coalesce(max(id), 0) FROM bench`).Scan(&maxID); err == nil {
				nextID.Store(maxID)
				r.Result = run(ctx, c.Workload, sqlOps(db, func(error) bool { return false }), &nextID)
			}
		default:
			err = fmt.Errorf("unknown command %q", c.Cmd)
		}
		if err != nil {
			r.Err = err.Error()
			err = nil
		}
		enc.Encode(r)
	}
	if db != nil {
		db.Close()
	}
	return 0
}
