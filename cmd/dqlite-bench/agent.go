package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"time"

	"github.com/godqlite/dqlite/cmd/dqlite-bench/workload"
)

// errNotInstalled is returned by a peer whose programs are not on PATH.
var errNotInstalled = errors.New("not installed")

// agent is a process that runs workloads where the benchmark cannot: on
// this project's leader node, or in a peer's client program.
type agent struct {
	cmd *exec.Cmd
	in  io.WriteCloser
	out *bufio.Scanner
}

// startAgent starts cmd as an agent, with extra file descriptors from 3.
func startAgent(cmd *exec.Cmd, files ...*os.File) (*agent, error) {
	cmd.ExtraFiles = files
	dieWithParent(cmd)
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	sc := bufio.NewScanner(out)
	sc.Buffer(nil, 1<<20)
	return &agent{cmd: cmd, in: in, out: sc}, nil
}

func (a *agent) ask(c workload.Command) (workload.Reply, error) {
	b, _ := json.Marshal(c)
	if _, err := a.in.Write(append(b, '\n')); err != nil {
		return workload.Reply{}, err
	}
	if !a.out.Scan() {
		return workload.Reply{}, fmt.Errorf("agent exited: %v", a.out.Err())
	}
	var r workload.Reply
	if err := json.Unmarshal(a.out.Bytes(), &r); err != nil {
		return workload.Reply{}, err
	}
	if r.Err != "" {
		return r, errors.New(r.Err)
	}
	return r, nil
}

// stop closes the agent's input, which makes it shut down, and waits.
func (a *agent) stop(timeout time.Duration) error {
	a.in.Close()
	done := make(chan error, 1)
	go func() { done <- a.cmd.Wait() }()
	select {
	case err := <-done:
		return err
	case <-time.After(timeout):
		a.cmd.Process.Kill()
		return <-done
	}
}
