package driver

import (
	"bufio"
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/godqlite/dqlite/internal/errs"
	"github.com/godqlite/dqlite/internal/wire"
)

// NodeStatus is what a node says of itself and of the cluster it knows.
type NodeStatus struct {
	ID            uint64
	Address       string
	LeaderID      uint64 // 0 when no leader is known
	LeaderAddress string
	Term          uint64
	CommitIndex   uint64
	AppliedIndex  uint64
	LastIndex     uint64 // of its Raft log
	Members       []Member
}

// Member is a member of the cluster's configuration.
type Member struct {
	ID      uint64
	Address string
	Role    string // voter, standby or spare
}

// AdminBackend is what a node offers operators over the client protocol.
type AdminBackend interface {
	Status() NodeStatus
	// AddNode, Assign, RemoveNode and TransferLeadership change the
	// cluster on the leader; elsewhere they fail with an error matching
	// ErrNotLeader. role is voter, standby or spare.
	AddNode(ctx context.Context, id uint64, address, role string) error
	Assign(ctx context.Context, id uint64, role string) error
	RemoveNode(ctx context.Context, id uint64) error
	TransferLeadership(ctx context.Context, id uint64) error
}

// admin runs an Admin request: the connection's only one.
func (sv *server) admin(ctx context.Context, r *wire.Reader) {
	op, id, addr := r.Uint(), r.Uint(), r.String()
	if err := r.End(); err != nil {
		sv.fail(err)
		return
	}
	ab, ok := sv.b.(AdminBackend)
	if !ok {
		sv.fail(errors.New("dqlite: this node offers no operations"))
		return
	}
	var err error
	switch op {
	case wire.AdminStatus:
		st := ab.Status()
		sv.w.Reset(wire.Status)
		sv.w.Uint(st.ID)
		sv.w.String(st.Address)
		sv.w.Uint(st.LeaderID)
		sv.w.String(st.LeaderAddress)
		sv.w.Uint(st.Term)
		sv.w.Uint(st.CommitIndex)
		sv.w.Uint(st.AppliedIndex)
		sv.w.Uint(st.LastIndex)
		sv.w.Uint(uint64(len(st.Members)))
		for _, m := range st.Members {
			sv.w.Uint(m.ID)
			sv.w.String(m.Address)
			sv.w.String(m.Role)
		}
		return
	case wire.AdminAdd:
		// The argument is the address, and the role after a space
		// (voter when there is none).
		address, role, _ := strings.Cut(addr, " ")
		err = ab.AddNode(ctx, id, address, cmp.Or(role, "voter"))
	case wire.AdminAssign:
		err = ab.Assign(ctx, id, addr)
	case wire.AdminRemove:
		err = ab.RemoveNode(ctx, id)
	case wire.AdminTransfer:
		err = ab.TransferLeadership(ctx, id)
	default:
		err = fmt.Errorf("%w: admin operation %d", wire.ErrMalformed, op)
	}
	if err != nil {
		sv.fail(err)
		return
	}
	sv.w.Reset(wire.Done)
	sv.w.Bool(false)
	sv.w.Uint(0)
}

// adminCall sends one Admin request to the node at address and returns
// its answer.
func adminCall(ctx context.Context, dial func(context.Context, string) (net.Conn, error), address string,
	op, id uint64, arg string) (wire.Type, *wire.Reader, error) {
	dial = OrTCP(dial)
	dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	nc, err := dial(dctx, address)
	cancel()
	if err != nil {
		return 0, nil, err
	}
	s := &session{nc: nc, br: bufio.NewReaderSize(nc, 64<<10)}
	defer nc.Close()
	if _, err := nc.Write([]byte{wire.Magic, wire.Version}); err != nil {
		return 0, nil, err
	}
	s.w.Reset(wire.Admin)
	s.w.Uint(op)
	s.w.Uint(id)
	s.w.String(arg)
	typ, r, err := s.call(ctx)
	if err != nil {
		return 0, nil, err
	}
	if typ == wire.Failure {
		_, _ = r.Bool(), r.Uint()
		return 0, nil, getError(r)
	}
	return typ, r, nil
}

// RemoteStatus asks the node at address for its status. dial opens the
// connection (nil: TCP), as RemoteOptions.Dial.
func RemoteStatus(ctx context.Context, dial func(context.Context, string) (net.Conn, error), address string) (NodeStatus, error) {
	typ, r, err := adminCall(ctx, dial, address, wire.AdminStatus, 0, "")
	if err != nil {
		return NodeStatus{}, err
	}
	if typ != wire.Status {
		return NodeStatus{}, fmt.Errorf("%w: answer of type %d to a status request", wire.ErrMalformed, typ)
	}
	st := NodeStatus{ID: r.Uint(), Address: r.String(), LeaderID: r.Uint(), LeaderAddress: r.String(),
		Term: r.Uint(), CommitIndex: r.Uint(), AppliedIndex: r.Uint(), LastIndex: r.Uint()}
	for range r.Count(3) {
		st.Members = append(st.Members, Member{ID: r.Uint(), Address: r.String(), Role: r.String()})
	}
	return st, r.End()
}

// RemoteAdmin changes the membership of the cluster that the nodes at
// addrs (some or all of its members) belong to: it finds the leader and
// asks it, waiting for an election under way until ctx is done. op is
// "add" (node id at arg, its address, followed by a space and its role
// when it is not to be a voter: "127.0.0.1:9001 standby"), "assign" (role
// arg to id), "remove" (id) or "transfer" (leadership to id; 0: any
// voter).
func RemoteAdmin(ctx context.Context, dial func(context.Context, string) (net.Conn, error), addrs []string,
	op string, id uint64, arg string) error {
	code := map[string]uint64{"add": wire.AdminAdd, "assign": wire.AdminAssign, "remove": wire.AdminRemove,
		"transfer": wire.AdminTransfer}[op]
	if code == 0 {
		return fmt.Errorf("dqlite: unknown operation %q (add, assign, remove, transfer)", op)
	}
	for {
		_, leader, err := RemoteLeader(ctx, dial, addrs)
		if err == nil {
			var typ wire.Type
			typ, _, err = adminCall(ctx, dial, leader, code, id, arg)
			if err == nil && typ != wire.Done {
				err = fmt.Errorf("%w: answer of type %d to %s", wire.ErrMalformed, typ, op)
			}
		}
		// Without a leader, or at one that just lost leadership, nothing
		// was done: try again while an election runs.
		if !errors.Is(err, errs.ErrNoLeader) && !errors.Is(err, errs.ErrNotLeader) {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// RemoteLeader returns the ID and address of the leader that the nodes at
// addrs know of, asking each in turn.
func RemoteLeader(ctx context.Context, dial func(context.Context, string) (net.Conn, error), addrs []string) (uint64, string, error) {
	st, _, tried := askAround(ctx, dial, addrs)
	if st.LeaderAddress == "" {
		return 0, "", fmt.Errorf("%w: %v", errs.ErrNoLeader, tried)
	}
	return st.LeaderID, st.LeaderAddress, nil
}

// askAround asks the nodes at addrs for their status in turn, until one
// knows a leader, and returns its answer (else the last answer; answered
// is false when none answered) and what each said.
func askAround(ctx context.Context, dial func(context.Context, string) (net.Conn, error), addrs []string) (
	st NodeStatus, answered bool, tried []string) {
	for _, a := range addrs {
		s, err := RemoteStatus(ctx, dial, a)
		if err != nil {
			tried = append(tried, fmt.Sprintf("%s: %v", a, err))
			continue
		}
		st, answered = s, true
		if st.LeaderAddress != "" {
			return st, true, tried
		}
		tried = append(tried, a+": knows no leader")
	}
	return st, answered, tried
}

// MemberStatus is a member of the cluster as RemoteCluster found it.
type MemberStatus struct {
	Member
	Status NodeStatus // its answer, when Err is nil
	Err    error
	Leader bool
	// Lag is how far its applied index trails the leader's (each as it
	// answered), when the leader answered.
	Lag      uint64
	LagKnown bool
}

// RemoteCluster asks the nodes at addrs for the cluster's members (a node
// that knows a leader first), then every member for its status.
func RemoteCluster(ctx context.Context, dial func(context.Context, string) (net.Conn, error), addrs []string) ([]MemberStatus, error) {
	st, answered, tried := askAround(ctx, dial, addrs)
	if !answered {
		return nil, fmt.Errorf("dqlite: no member answered: %s", strings.Join(tried, "; "))
	}
	// The leader's configuration is the latest: a follower's may not have
	// a change just made yet. Answers already had are not asked again.
	known := map[string]NodeStatus{st.Address: st}
	if st.LeaderAddress != "" && st.LeaderID != st.ID {
		if lst, err := RemoteStatus(ctx, dial, st.LeaderAddress); err == nil {
			st, known[st.LeaderAddress] = lst, lst
		}
	}
	members := st.Members
	ms := make([]MemberStatus, len(members))
	var leaderApplied uint64
	leader := false
	for i, m := range members {
		ms[i].Member = m
		if k, ok := known[m.Address]; ok {
			ms[i].Status = k
		} else {
			ms[i].Status, ms[i].Err = RemoteStatus(ctx, dial, m.Address)
		}
		if st := ms[i].Status; ms[i].Err == nil && st.ID != 0 && st.LeaderID == st.ID {
			ms[i].Leader, leader, leaderApplied = true, true, st.AppliedIndex
		}
	}
	for i := range ms {
		if leader && ms[i].Err == nil {
			ms[i].Lag, ms[i].LagKnown = leaderApplied-min(leaderApplied, ms[i].Status.AppliedIndex), true
		}
	}
	return ms, nil
}
