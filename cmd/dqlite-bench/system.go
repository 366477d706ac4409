package main

import (
	"context"
	"sync/atomic"

	"github.com/godqlite/dqlite/cmd/dqlite-bench/workload"
)

// System is one database system under measurement.
type System interface {
	Name() string
	Durability() string
	// Start runs the system with its files under dir, creates the schema
	// and the rows the read workload needs.
	Start(ctx context.Context, dir string) error
	Run(ctx context.Context, w workload.Workload) (workload.Result, error)
	Stop() error
}

// opsStarter is a system whose operations run in this process, as a
// client's would.
type opsStarter interface {
	Name() string
	Durability() string
	Start(ctx context.Context, dir string) (workload.Ops, error)
	Stop() error
}

// clientSystem measures an opsStarter from this process.
type clientSystem struct {
	opsStarter
	ops    workload.Ops
	nextID atomic.Int64
}

func (c *clientSystem) Start(ctx context.Context, dir string) error {
	ops, err := c.opsStarter.Start(ctx, dir)
	if err != nil {
		return err
	}
	c.ops = ops
	return workload.Prefill(ctx, ops, &c.nextID)
}

func (c *clientSystem) Run(ctx context.Context, w workload.Workload) (workload.Result, error) {
	return workload.Run(ctx, w, c.ops, &c.nextID), nil
}
