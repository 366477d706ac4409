package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/godqlite/dqlite"
	"github.com/godqlite/dqlite/cmd/dqlite-bench/workload"
)

// nodeFlag, as the first argument, runs the binary as a node of this
// project's cluster: an agent that runs workloads on its own *sql.DB when
// the benchmark asks, as an application embedding the library would.
const nodeFlag = "-node"

// thisProject is a cluster of this library, each node its own process,
// like the peers' nodes. Workloads run on the leader's own *sql.DB.
type thisProject struct {
	nodes    int
	logStore string
	agents   []*agent
	leader   *agent
}

func (p *thisProject) Name() string { return "dqlite-go" }

func (p *thisProject) Durability() string {
	kind := "BoltDB"
	if p.logStore == "wal" {
		kind = "raft-wal"
	}
	return fmt.Sprintf("%d processes; Raft log (%s) fsynced on every commit, quorum of %d", p.nodes, kind, p.nodes/2+1)
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
		a, err := startAgent(exec.Command(exe, nodeFlag, "-id", strconv.Itoa(i+1),
			"-dir", filepath.Join(dir, fmt.Sprint("node", i+1)), "-peers", strings.Join(peers, ","), "-logstore", p.logStore), files[i])
		if err != nil {
			return err
		}
		p.agents = append(p.agents, a)
	}
	for deadline := time.Now().Add(30 * time.Second); p.leader == nil; {
		if time.Now().After(deadline) {
			return errors.New("no leader after 30s")
		}
		for _, a := range p.agents {
			if r, err := a.ask(workload.Command{Cmd: "leader"}); err == nil && r.Leader {
				p.leader = a
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	_, err = p.leader.ask(workload.Command{Cmd: "prepare"})
	return err
}

func (p *thisProject) Run(ctx context.Context, w workload.Workload) (workload.Result, error) {
	r, err := p.leader.ask(workload.Command{Cmd: "run", Workload: w})
	return r.Result, err
}

func (p *thisProject) Stop() error {
	var errList []error
	for _, a := range p.agents {
		errList = append(errList, a.stop(10*time.Second))
	}
	return errors.Join(errList...)
}

// runNode is an agent: a node that answers the benchmark's commands.
func runNode(args []string) int {
	node, _, err := startNode("node", args, "bolt", nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fail := func(err error) int {
		fmt.Fprintf(os.Stderr, "node %d: %v\n", node.ID(), err)
		return 1
	}
	defer node.Close()
	err = workload.Serve(os.Stdin, os.Stdout, node.IsLeader, func(ctx context.Context) (workload.Ops, func(context.Context) (int64, error), error) {
		db, err := node.Open(ctx, "bench.db")
		if err != nil {
			return workload.Ops{}, nil, err
		}
		if _, err := db.ExecContext(ctx, workload.Schema); err != nil {
			return workload.Ops{}, nil, err
		}
		return workload.SQLOps(db, func(error) bool { return false }), workload.MaxID(db), nil
	})
	if err != nil {
		return fail(err)
	}
	return 0
}

// parsePeers reads a -peers list, id=address,...; empty means none.
func parsePeers(list string) []dqlite.Peer {
	var peers []dqlite.Peer
	if list == "" {
		return nil
	}
	for _, p := range strings.Split(list, ",") {
		pid, addr, _ := strings.Cut(p, "=")
		n, _ := strconv.Atoi(pid)
		peers = append(peers, dqlite.Peer{ID: dqlite.NodeID(n), Address: addr})
	}
	return peers
}

// startNode starts this process's node of a benchmark cluster from its
// command line (-id, -dir, -peers, -logstore, the Raft listener on fd 3).
func startNode(name string, args []string, defaultStore string, logger *slog.Logger) (*dqlite.Node, string, error) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	id := fs.Int("id", 0, "node ID")
	dir := fs.String("dir", "", "data directory")
	peerList := fs.String("peers", "", "id=address,... to bootstrap with (empty: join)")
	logStore := fs.String("logstore", defaultStore, "Raft log store")
	if err := fs.Parse(args); err != nil {
		return nil, "", err
	}
	l, err := net.FileListener(os.NewFile(3, "raft-listener"))
	if err != nil {
		return nil, *dir, fmt.Errorf("node %d: %w", *id, err)
	}
	node, err := dqlite.New(dqlite.Config{ID: dqlite.NodeID(*id), Address: l.Addr().String(), Listener: l,
		Dir: *dir, Cluster: parsePeers(*peerList), LogStore: *logStore, Logger: logger})
	if err != nil {
		return nil, *dir, fmt.Errorf("node %d: %w", *id, err)
	}
	return node, *dir, nil
}
