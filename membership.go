package dqlite

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/hashicorp/raft"
)

// Membership changes run on the leader. On another node they fail with a
// *NotLeaderError naming the leader.

// Members returns the cluster's current members.
func (n *Node) Members(ctx context.Context) ([]Peer, error) {
	if err := n.checkOpen(); err != nil {
		return nil, err
	}
	f := n.raft.GetConfiguration()
	if err := waitFuture(ctx, f); err != nil {
		return nil, err
	}
	return peers(f.Configuration()), nil
}

// AddVoter adds the node id, listening at address, as a voting member. The
// node must have been started on an empty data directory without
// Config.Cluster; it then receives the databases from the leader (by
// snapshot when the log was compacted) and serves reads. Adding a member
// that is already there with the same address does nothing.
func (n *Node) AddVoter(ctx context.Context, id NodeID, address string) error {
	return n.AddNode(ctx, id, address, Voter)
}

// RemoveNode removes node id from the cluster. Removing the leader itself
// makes it step down once the change is committed.
func (n *Node) RemoveNode(ctx context.Context, id NodeID) error {
	if err := n.checkMembershipLeader(); err != nil {
		return err
	}
	peers, err := n.Members(ctx)
	if err != nil {
		return err
	}
	found, voters, isVoter := false, 0, false
	for _, p := range peers {
		found = found || p.ID == id
		if p.Role == Voter {
			voters++
			isVoter = isVoter || p.ID == id
		}
	}
	if !found {
		return fmt.Errorf("%w: %d", ErrNoSuchNode, id)
	}
	if isVoter && voters == 1 {
		return fmt.Errorf("%w: node %d", ErrLastVoter, id)
	}
	return n.mapMembershipErr(waitFuture(ctx, n.raft.RemoveServer(serverID(id), 0, timeoutOf(ctx))))
}

// TransferLeadership hands leadership to node id, or to the most
// up-to-date other voter when id is 0, and waits until this node is no
// longer the leader.
func (n *Node) TransferLeadership(ctx context.Context, id NodeID) error {
	if err := n.checkMembershipLeader(); err != nil {
		return err
	}
	var f raft.Future
	if id == 0 {
		f = n.raft.LeadershipTransfer()
	} else {
		peers, err := n.Members(ctx)
		if err != nil {
			return err
		}
		addr := ""
		for _, p := range peers {
			if p.ID == id {
				addr = p.Address
				if p.Role != Voter {
					return fmt.Errorf("dqlite: node %d is a %s: only a voter can lead", id, p.Role)
				}
			}
		}
		if addr == "" {
			return fmt.Errorf("%w: %d", ErrNoSuchNode, id)
		}
		f = n.raft.LeadershipTransferToServer(serverID(id), raft.ServerAddress(addr))
	}
	return n.mapMembershipErr(waitFuture(ctx, f))
}

func (n *Node) checkMembershipLeader() error {
	if err := n.checkOpen(); err != nil {
		return err
	}
	if n.raft.State() != raft.Leader {
		id, addr := n.Leader()
		return &NotLeaderError{LeaderID: id, LeaderAddress: addr}
	}
	return nil
}

func (n *Node) mapMembershipErr(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, raft.ErrNotLeader), errors.Is(err, raft.ErrLeadershipLost):
		id, addr := n.Leader()
		return &NotLeaderError{LeaderID: id, LeaderAddress: addr}
	case errors.Is(err, raft.ErrRaftShutdown):
		return ErrClosed
	}
	return err
}

func serverID(id NodeID) raft.ServerID { return raft.ServerID(strconv.FormatUint(uint64(id), 10)) }

// nodeID is serverID's inverse (0 for a server ID that is no node ID).
func nodeID(id raft.ServerID) NodeID {
	v, _ := strconv.ParseUint(string(id), 10, 64)
	return NodeID(v)
}

// peers lists a configuration's servers.
func peers(c raft.Configuration) []Peer {
	var ps []Peer
	for _, s := range c.Servers {
		m := memberOf(s)
		ps = append(ps, Peer{ID: m.ID, Address: m.Address, Role: m.Role})
	}
	return ps
}

func timeoutOf(ctx context.Context) time.Duration {
	if dl, ok := ctx.Deadline(); ok {
		return max(time.Until(dl), time.Millisecond)
	}
	return 0
}

// waitFuture waits for a raft future, or for ctx.
func waitFuture(ctx context.Context, f raft.Future) error {
	done := make(chan error, 1)
	go func() { done <- f.Error() }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}
