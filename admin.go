package dqlite

import (
	"context"
	"strconv"

	"github.com/hashicorp/raft"

	"github.com/godqlite/dqlite/driver"
)

// The operations the client protocol offers (driver.AdminBackend), for the
// dqlite shell and driver.RemoteStatus and driver.RemoteAdmin.

var _ driver.AdminBackend = backend{}

func (b backend) Status() driver.NodeStatus {
	n := b.n
	st := driver.NodeStatus{ID: uint64(n.cfg.ID), Address: n.Address(), AppliedIndex: n.fsm.AppliedIndex()}
	if n.checkOpen() != nil {
		return st
	}
	id, addr := n.Leader()
	st.LeaderID, st.LeaderAddress = uint64(id), addr
	st.Term, st.CommitIndex, st.LastIndex = n.raft.CurrentTerm(), n.raft.CommitIndex(), n.raft.LastIndex()
	f := n.raft.GetConfiguration()
	if f.Error() == nil {
		for _, s := range f.Configuration().Servers {
			id, _ := strconv.ParseUint(string(s.ID), 10, 64)
			st.Members = append(st.Members, driver.Member{ID: id, Address: string(s.Address), Voter: s.Suffrage == raft.Voter})
		}
	}
	return st
}

func (b backend) AddVoter(ctx context.Context, id uint64, address string) error {
	return b.n.AddVoter(ctx, NodeID(id), address)
}

func (b backend) RemoveNode(ctx context.Context, id uint64) error {
	return b.n.RemoveNode(ctx, NodeID(id))
}

func (b backend) TransferLeadership(ctx context.Context, id uint64) error {
	return b.n.TransferLeadership(ctx, NodeID(id))
}
