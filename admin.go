package dqlite

import (
	"context"

	"github.com/godqlite/dqlite/driver"
)

// The operations the client protocol offers (driver.AdminBackend), for the
// dqlite shell and driver.RemoteStatus and driver.RemoteAdmin.

var _ driver.AdminBackend = backend{}

func (b backend) Status() driver.NodeStatus {
	st := b.n.status(false)
	ds := driver.NodeStatus{ID: uint64(st.ID), Address: st.Address, LeaderID: uint64(st.LeaderID), LeaderAddress: st.LeaderAddress,
		Term: st.Term, CommitIndex: st.CommitIndex, AppliedIndex: st.AppliedIndex, LastIndex: st.LastIndex}
	for _, m := range st.Members {
		ds.Members = append(ds.Members, driver.Member{ID: uint64(m.ID), Address: m.Address, Role: string(m.Role)})
	}
	return ds
}

func (b backend) AddNode(ctx context.Context, id uint64, address, role string) error {
	return b.n.AddNode(ctx, NodeID(id), address, Role(role))
}

func (b backend) Assign(ctx context.Context, id uint64, role string) error {
	return b.n.Assign(ctx, NodeID(id), Role(role))
}

func (b backend) RemoveNode(ctx context.Context, id uint64) error {
	return b.n.RemoveNode(ctx, NodeID(id))
}

func (b backend) TransferLeadership(ctx context.Context, id uint64) error {
	return b.n.TransferLeadership(ctx, NodeID(id))
}
