// Package errs defines the errors shared by every layer. The root package
// dqlite re-exports each of them under the same name, so errors.Is works
// whichever layer returned the error.
package errs

import (
	"errors"
	"fmt"
)

var (
	ErrNotLeader      = errors.New("dqlite: not the leader")
	ErrLeadershipLost = errors.New("dqlite: leadership lost while committing")
	ErrNoQuorum       = errors.New("dqlite: no quorum: commit timed out")
	ErrClosed         = errors.New("dqlite: node is closed")
	ErrTxTooLarge     = errors.New("dqlite: transaction too large")
	ErrDiverged       = errors.New("dqlite: database diverged from the cluster")
	ErrNoDatabase     = errors.New("dqlite: no such database")
	ErrRefused        = errors.New("dqlite: statement refused")
	ErrBusy           = errors.New("dqlite: database is busy")
	ErrInvalidName    = errors.New("dqlite: invalid database name")
	ErrNoLeader       = errors.New("dqlite: no leader")
	ErrNeedsRecovery  = errors.New("dqlite: data directory needs an operator's decision")
	ErrNoNode         = errors.New("dqlite: no such node in this process")
)

// ErrDirInUse is returned when another node holds the data directory.
var ErrDirInUse = errors.New("dqlite: data directory is in use by another node")

// Membership errors.
var (
	ErrNodeExists = errors.New("dqlite: a node with this ID or address is already a member")
	ErrNoSuchNode = errors.New("dqlite: no such node in the cluster")
	ErrLastVoter  = errors.New("dqlite: cannot remove the last voter")
)

// NodeID identifies a node in a cluster (dqlite.NodeID).
type NodeID uint64

// NotLeaderError is dqlite.NotLeaderError.
type NotLeaderError struct {
	LeaderID      NodeID // 0 when no leader is known
	LeaderAddress string // "" when no leader is known
}

func (e *NotLeaderError) Error() string {
	if e.LeaderAddress == "" {
		return "dqlite: not the leader (no leader known)"
	}
	return fmt.Sprintf("dqlite: not the leader (leader is node %d at %s)", e.LeaderID, e.LeaderAddress)
}

// Is makes errors.Is(err, ErrNotLeader) hold.
func (e *NotLeaderError) Is(target error) bool { return target == ErrNotLeader }
