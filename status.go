package dqlite

import (
	"os"
	"slices"
	"strings"

	"github.com/hashicorp/raft"

	"github.com/godqlite/dqlite/internal/command"
	"github.com/godqlite/dqlite/wal"
)

// Role is a member's part in the cluster; empty for a node that is not
// in the configuration (not added yet, or removed).
type Role string

const (
	// Voter: replicates every database and votes; a quorum of voters
	// commits.
	Voter Role = "voter"
	// Standby: replicates every database but does not vote (a Raft
	// non-voter); it serves reads and can become a voter quickly.
	Standby Role = "standby"
)

// Status is a node's view of itself and of the cluster, at one moment.
type Status struct {
	ID      NodeID `json:"id"`
	Address string `json:"address"`
	Role    Role   `json:"role"`
	// State is Raft's: "Leader", "Follower", "Candidate" or "Shutdown".
	State string `json:"state"`
	// Ready: the leader, with every entry of earlier terms applied: it
	// takes writes.
	Ready         bool   `json:"ready"`
	Term          uint64 `json:"term"`
	LeaderID      NodeID `json:"leader_id"` // 0 when no leader is known
	LeaderAddress string `json:"leader_address"`
	// CommitIndex is the last Raft entry this node knows to be committed
	// (a follower learns it from the leader's appends, within
	// milliseconds); AppliedIndex the last it applied; Lag the entries
	// between them: how far its reads trail the leader's commits. The
	// Raft log holds entries up to LastIndex; SnapshotIndex is the latest
	// snapshot's.
	CommitIndex   uint64           `json:"commit_index"`
	AppliedIndex  uint64           `json:"applied_index"`
	Lag           uint64           `json:"lag"`
	LastIndex     uint64           `json:"last_index"`
	SnapshotIndex uint64           `json:"snapshot_index"`
	Members       []Member         `json:"members"`
	Databases     []DatabaseStatus `json:"databases"`
}

// Member is a member of the cluster's configuration.
type Member struct {
	ID      NodeID `json:"id"`
	Address string `json:"address"`
	Role    Role   `json:"role"`
}

// DatabaseStatus describes one database on a node.
type DatabaseStatus struct {
	Name string `json:"name"`
	// Size of the database file in bytes, and of its WAL; WALFrames is the
	// WAL's committed frames (those not yet checkpointed included).
	Size      int64  `json:"size"`
	WALSize   int64  `json:"wal_size"`
	WALFrames uint32 `json:"wal_frames"`
	// AppliedIndex is the Raft index of the last transaction of this
	// database the node's files hold; SnapshotIndex the one the latest
	// snapshot holds (0 when it holds none).
	AppliedIndex  uint64 `json:"applied_index"`
	SnapshotIndex uint64 `json:"snapshot_index"`
	// Lag is how many transactions of this database the node knows
	// committed but has not applied yet: its lag behind the leader. It is
	// counted from the node's Raft log when the node's Lag is at most 256
	// entries holding at most 16 MiB, and is the node's Lag (an upper
	// bound) beyond.
	Lag uint64 `json:"lag"`
	// Failed is why the node stopped serving the database, or "".
	Failed string `json:"failed,omitempty"`
}

// Status returns the node's status. It costs a few system calls per
// database, nothing that grows with their size; on a node that lags, it
// also reads the log entries it has not applied (at most 256 entries and
// 16 MiB) to count each database's lag.
func (n *Node) Status() Status { return n.status(true) }

// status is Status; without lags, the databases' Lag is not counted (the
// metrics, readiness and the client protocol's status do not use it).
func (n *Node) status(lags bool) Status {
	st := Status{ID: n.cfg.ID, Address: n.Address(), State: raft.Shutdown.String(),
		AppliedIndex: n.fsm.AppliedIndex(), SnapshotIndex: n.snaps.LatestIndex()}
	snapDBs := map[string]uint64{}
	if latest, ok := n.snaps.Latest(); ok {
		for _, d := range latest.DBs {
			snapDBs[d.Name] = d.Index
		}
	}
	for _, d := range n.fsm.Databases() {
		ds := DatabaseStatus{Name: d.Name, AppliedIndex: d.AppliedIndex(), SnapshotIndex: snapDBs[d.Name]}
		if fi, err := os.Stat(d.Path()); err == nil {
			ds.Size = fi.Size()
		}
		if fi, err := os.Stat(d.Path() + "-wal"); err == nil {
			ds.WALSize = fi.Size()
		}
		ds.WALFrames = walFrames(d.Path() + "-shm")
		if err := d.Failed(); err != nil {
			ds.Failed = err.Error()
		}
		st.Databases = append(st.Databases, ds)
	}
	slices.SortFunc(st.Databases, func(a, b DatabaseStatus) int { return strings.Compare(a.Name, b.Name) })
	if n.checkOpen() != nil {
		return st
	}
	st.State = n.raft.State().String()
	st.Ready = n.checkLeader() == nil
	st.LeaderID, st.LeaderAddress = n.Leader()
	st.Term, st.CommitIndex, st.LastIndex = n.raft.CurrentTerm(), n.raft.CommitIndex(), n.raft.LastIndex()
	if st.CommitIndex > st.AppliedIndex {
		st.Lag = st.CommitIndex - st.AppliedIndex
		var counted map[string]uint64
		if lags {
			counted = n.databaseLags(st.AppliedIndex, st.CommitIndex)
		}
		for i := range st.Databases {
			if counted == nil {
				st.Databases[i].Lag = st.Lag
			} else {
				st.Databases[i].Lag = counted[st.Databases[i].Name]
			}
		}
	}
	if f := n.raft.GetConfiguration(); f.Error() == nil {
		for _, s := range f.Configuration().Servers {
			m := memberOf(s)
			if m.ID == n.cfg.ID {
				st.Role = m.Role
			}
			st.Members = append(st.Members, m)
		}
	}
	return st
}

// databaseLags counts, per database, the transactions in the log entries
// after applied up to commit; nil when there are more than 256 entries to
// read, or more than 16 MiB, or one cannot be read.
func (n *Node) databaseLags(applied, commit uint64) map[string]uint64 {
	if commit-applied > 256 {
		return nil
	}
	lags := map[string]uint64{}
	read := 0
	for i := applied + 1; i <= commit; i++ {
		var l raft.Log
		if err := n.store.GetLog(i, &l); err != nil {
			return nil
		}
		if read += len(l.Data); read > 16<<20 {
			return nil
		}
		if l.Type != raft.LogCommand {
			continue
		}
		if cmd, err := command.Decode(l.Data); err == nil {
			if f, ok := cmd.(*command.Frames); ok {
				lags[f.Database] += uint64(max(1, len(f.Changes)))
			}
		}
	}
	return lags
}

// walFrames reads the last committed frame from a copy of the wal-index
// header in the -shm file: the node's own mapping of it is not for other
// goroutines. 0 when the header cannot be read whole (SQLite was writing
// it, twice in a row).
func walFrames(shmPath string) uint32 {
	f, err := os.Open(shmPath)
	if err != nil {
		return 0
	}
	defer f.Close()
	for range 2 {
		b := make([]byte, wal.RegionSize)
		if _, err := f.ReadAt(b[:wal.IndexHeaderSize], 0); err != nil {
			return 0
		}
		if h, err := wal.NewIndex(region(b)).Header(); err == nil {
			return h.MaxFrame
		}
	}
	return 0
}

// region is a copy of the wal-index's first region, as wal.Memory.
type region []byte

func (r region) Region(i int) ([]byte, error) {
	if i != 0 {
		return nil, os.ErrNotExist
	}
	return r, nil
}
