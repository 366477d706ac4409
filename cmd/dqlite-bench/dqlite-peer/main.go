// Command dqlite-peer is dqlite-bench's client for canonical's dqlite: it
// starts a cluster of go-dqlite's dqlite-demo program and runs the
// benchmark's workloads through go-dqlite's driver, answering the
// benchmark on standard input and output. It is a module of its own so
// that the library's go.mod carries no peer dependency, and a program of
// its own because go-dqlite brings a second SQLite binding.
package main

import (
	"context"
	"database/sql"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/canonical/go-dqlite/client"
	"github.com/canonical/go-dqlite/driver"

	"github.com/godqlite/dqlite/cmd/dqlite-bench/workload"
)

func main() {
	demo := flag.String("demo", "dqlite-demo", "the dqlite-demo program")
	nodes := flag.Int("nodes", 3, "number of nodes")
	dir := flag.String("dir", "", "data directory")
	flag.Parse()
	procs, err := start(*demo, *nodes, *dir)
	defer stop(procs)
	if err == nil {
		err = workload.Serve(os.Stdin, os.Stdout, func() bool { return true }, prepare(procs.addrs))
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "dqlite-peer:", err)
		stop(procs)
		os.Exit(1)
	}
}

type cluster struct {
	cmds  []*exec.Cmd
	addrs []string
}

func start(demo string, n int, dir string) (*cluster, error) {
	c := &cluster{}
	ports, err := workload.FreePorts(2 * n)
	if err != nil {
		return c, err
	}
	api, db := ports[:n], ports[n:]
	for i := range n {
		args := []string{"--api", api[i], "--db", db[i], "-D", filepath.Join(dir, fmt.Sprint("dqlite", i+1))}
		if i > 0 {
			args = append(args, "--join", db[0])
		}
		cmd := exec.Command(demo, args...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			return c, err
		}
		c.cmds = append(c.cmds, cmd)
		c.addrs = append(c.addrs, db[i])
		time.Sleep(200 * time.Millisecond) // let each node come up before the next joins it
	}
	return c, nil
}

// stop stops the followers, then the first node (a leader left alone
// hangs handing over), killing what does not stop.
func stop(c *cluster) {
	if c == nil {
		return
	}
	for i := len(c.cmds) - 1; i >= 0; i-- {
		p := c.cmds[i]
		if p.Process == nil || p.ProcessState != nil {
			continue
		}
		p.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { p.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(3 * time.Second):
			p.Process.Kill()
			<-done
		}
	}
}

func prepare(addrs []string) func(ctx context.Context) (workload.Ops, func(context.Context) (int64, error), error) {
	return func(ctx context.Context) (workload.Ops, func(context.Context) (int64, error), error) {
		store := client.NewInmemNodeStore()
		var infos []client.NodeInfo
		for _, a := range addrs {
			infos = append(infos, client.NodeInfo{Address: a})
		}
		if err := store.Set(ctx, infos); err != nil {
			return workload.Ops{}, nil, err
		}
		if err := waitVoters(ctx, store, len(addrs)); err != nil {
			return workload.Ops{}, nil, err
		}
		drv, err := driver.New(store)
		if err != nil {
			return workload.Ops{}, nil, err
		}
		sql.Register("dqlite", drv)
		db, err := sql.Open("dqlite", "bench")
		if err != nil {
			return workload.Ops{}, nil, err
		}
		if _, err := db.ExecContext(ctx, workload.Schema); err != nil {
			return workload.Ops{}, nil, err
		}
		// dqlite 1.11 does not queue writers: a concurrent one gets
		// "database is locked" and must try again.
		busy := func(err error) bool {
			var de driver.Error
			return (errors.As(err, &de) && de.Code&0xff == 5) || strings.Contains(err.Error(), "database is locked")
		}
		return workload.SQLOps(db, busy, nil), workload.MaxID(db), nil
	}
}

// waitVoters waits until every node is a voter: joining nodes start as
// spares and the leader promotes them.
func waitVoters(ctx context.Context, store client.NodeStore, n int) error {
	deadline := time.Now().Add(90 * time.Second)
	for time.Now().Before(deadline) {
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		cli, err := client.FindLeader(cctx, store)
		if err == nil {
			servers, err := cli.Cluster(cctx)
			cli.Close()
			voters := 0
			for _, s := range servers {
				if err == nil && s.Role == client.Voter {
					voters++
				}
			}
			if voters == n {
				cancel()
				return nil
			}
		}
		cancel()
		time.Sleep(250 * time.Millisecond)
	}
	return fmt.Errorf("not %d voters after 90s", n)
}
