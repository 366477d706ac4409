package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"time"

	"github.com/godqlite/dqlite/cmd/dqlite-bench/workload"
)

const dqliteInstall = "dqlite-demo not found on PATH: apt-get install libdqlite-dev libraft-dev libuv1-dev, " +
	"then build github.com/canonical/go-dqlite/cmd/dqlite-demo v1.11.5 with -tags libsqlite3 (see PEERS.md) to include dqlite"

// dqlitePeer is a cluster of canonical's dqlite 1.11 (the dqlite-demo
// program of go-dqlite v1.11.5), measured by the client program in
// dqlite-peer/, a module of its own: go-dqlite's driver brings a second
// SQLite binding, which must not share a process with ours.
type dqlitePeer struct {
	nodes int
	agent *agent
}

func (d *dqlitePeer) Name() string { return "dqlite" }

func (d *dqlitePeer) Durability() string {
	return fmt.Sprintf("%d processes; Raft log (libraft) fsynced on every commit, quorum of %d; busy writers retried", d.nodes, d.nodes/2+1)
}

func (d *dqlitePeer) Start(ctx context.Context, dir string) error {
	bin, err := exec.LookPath("dqlite-demo")
	if err != nil {
		return fmt.Errorf("%w: %s", errNotInstalled, dqliteInstall)
	}
	_, self, _, _ := runtime.Caller(0)
	client := filepath.Join(dir, "dqlite-peer-client")
	build := exec.CommandContext(ctx, "go", "build", "-o", client, ".")
	build.Dir = filepath.Join(filepath.Dir(self), "dqlite-peer")
	build.Env = append(os.Environ(), "GOWORK=off")
	if out, err := build.CombinedOutput(); err != nil {
		return fmt.Errorf("build the dqlite client: %v\n%s", err, out)
	}
	d.agent, err = startAgent(exec.Command(client, "-demo", bin, "-nodes", strconv.Itoa(d.nodes), "-dir", dir))
	if err != nil {
		return err
	}
	_, err = d.agent.ask(workload.Command{Cmd: "prepare"})
	return err
}

func (d *dqlitePeer) Run(ctx context.Context, w workload.Workload) (workload.Result, error) {
	r, err := d.agent.ask(workload.Command{Cmd: "run", Workload: w})
	return r.Result, err
}

func (d *dqlitePeer) Stop() error {
	if d.agent == nil {
		return nil
	}
	return d.agent.stop(30 * time.Second)
}
