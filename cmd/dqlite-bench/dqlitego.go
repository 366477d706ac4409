package main

import (
	"context"
	"database/sql"
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
	"sync/atomic"
	"time"

	"github.com/godqlite/dqlite"
	"github.com/godqlite/dqlite/cmd/dqlite-bench/workload"
	"github.com/godqlite/dqlite/driver"
)

// nodeFlag, as the first argument, runs the binary as a node of this
// project's cluster: an agent that runs workloads on its own *sql.DB when
// the benchmark asks, as an application embedding the library would.
const nodeFlag = "-node"

// thisProject is a cluster of this library, each node its own process,
// like the peers' nodes. Workloads run, by via, on the leader's own
// *sql.DB (""), on a follower's ("follower": writes are forwarded to the
// leader, reads stay local), or in the benchmark's process as a remote
// client of the cluster ("remote": everything runs on the leader).
type thisProject struct {
	nodes    int
	logStore string
	via      string
	agents   []*agent
	leader   *agent
	runner   *agent // where workloads run, unless remote
	addrs    []string

	remote *sql.DB
	ops    workload.Ops
	nextID atomic.Int64
}

func (p *thisProject) Name() string {
	if p.via == "" {
		return "dqlite-go"
	}
	return "dqlite-go/" + p.via
}

func (p *thisProject) Durability() string {
	kind := "BoltDB"
	if p.logStore == "wal" {
		kind = "raft-wal"
	}
	via := "on the leader's *sql.DB"
	switch p.via {
	case "follower":
		via = "on a follower's *sql.DB (writes forwarded to the leader, reads local)"
	case "remote":
		via = "as a remote client (dqlite:// data source name; everything on the leader)"
	}
	return fmt.Sprintf("%d processes; Raft log (%s) fsynced on every commit, quorum of %d; %s; linread: dqlite.ReadLinearizable",
		p.nodes, kind, p.nodes/2+1, via)
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
		p.addrs = append(p.addrs, l.Addr().String())
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
	if _, err := p.leader.ask(workload.Command{Cmd: "prepare"}); err != nil {
		return err
	}
	p.runner = p.leader
	switch p.via {
	case "follower":
		for _, a := range p.agents {
			if a != p.leader {
				p.runner = a
				break
			}
		}
		_, err = p.runner.ask(workload.Command{Cmd: "prepare"})
		return err
	case "remote":
		p.remote, err = sql.Open(driver.Name, "dqlite://"+strings.Join(p.addrs, ",")+"/bench.db")
		if err != nil {
			return err
		}
		p.remote.SetMaxIdleConns(64)
		p.ops = workload.SQLOps(p.remote, func(error) bool { return false }, linearizable)
		return nil
	}
	return nil
}

// linearizable is this project's linearizable read level.
func linearizable(ctx context.Context) context.Context {
	return dqlite.WithReadLevel(ctx, dqlite.ReadLinearizable)
}

func (p *thisProject) Run(ctx context.Context, w workload.Workload) (workload.Result, error) {
	if p.remote != nil {
		id, err := workload.MaxID(p.remote)(linearizable(ctx))
		if err != nil {
			return workload.Result{}, err
		}
		p.nextID.Store(id)
		return workload.Run(ctx, w, p.ops, &p.nextID), nil
	}
	r, err := p.runner.ask(workload.Command{Cmd: "run", Workload: w})
	return r.Result, err
}

func (p *thisProject) Stop() error {
	var errList []error
	if p.remote != nil {
		errList = append(errList, p.remote.Close())
	}
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
		// The largest ID of rows another node may have written just now:
		// a linearizable read sees them.
		maxID := func(ctx context.Context) (int64, error) { return workload.MaxID(db)(linearizable(ctx)) }
		return workload.SQLOps(db, func(error) bool { return false }, linearizable), maxID, nil
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
