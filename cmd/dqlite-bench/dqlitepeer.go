package main

import (
	"context"
	"errors"
	"fmt"
)

// errNotInstalled is returned by a peer whose programs are not on PATH.
var errNotInstalled = errors.New("not installed")

// dqlitePeer is a 3-node cluster of canonical's dqlite 1.11 (the
// dqlite-demo program of go-dqlite v1.11.5 on PATH), driven through
// go-dqlite's pure-Go driver.
type dqlitePeer struct {
	nodes int
}

func (d *dqlitePeer) Name() string { return "dqlite" }

func (d *dqlitePeer) Durability() string {
	return fmt.Sprintf("%d processes; Raft log (libraft) fsynced on every commit, quorum of %d", d.nodes, d.nodes/2+1)
}

func (d *dqlitePeer) Start(ctx context.Context, dir string) (Ops, error) {
	return Ops{}, fmt.Errorf("%w: pending", errNotInstalled)
}

func (d *dqlitePeer) Stop() error { return nil }
