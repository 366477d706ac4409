package dqlite

import (
	"errors"

	"github.com/godqlite/dqlite/internal/errs"
)

// The errors of dqlite. Every layer returns these same values (or errors
// wrapping them), so errors.Is works whichever layer an error came from.
var (
	// ErrNotLeader is returned when a write, a database creation or a
	// membership change reaches a node that is not the leader, or a leader
	// that is not ready to accept writes yet. The error is a
	// *NotLeaderError naming the leader when one is known.
	ErrNotLeader = errs.ErrNotLeader
	// ErrLeadershipLost is returned when the node lost leadership while a
	// transaction was being committed, or when a transaction was rolled
	// back because its node lost leadership. The transaction may or may
	// not have committed: if Raft committed it, it is present on every
	// node; otherwise it is present on none.
	ErrLeadershipLost = errs.ErrLeadershipLost
	// ErrNoQuorum is returned when a commit did not reach a quorum within
	// Config.ApplyTimeout. As with ErrLeadershipLost the outcome is
	// unknown until the cluster recovers; the node accepts no new write
	// until it is known.
	ErrNoQuorum = errs.ErrNoQuorum
	// ErrClosed is returned by a node, and by its connections, after Close.
	ErrClosed = errs.ErrClosed
	// ErrTxTooLarge is returned when a transaction writes more page data
	// than Config.MaxTxSize. Nothing was replicated or written.
	ErrTxTooLarge = errs.ErrTxTooLarge
	// ErrDiverged is returned when this node's copy of a database can no
	// longer be trusted (an entry failed to apply); the node stops serving
	// that database.
	ErrDiverged = errs.ErrDiverged
	// ErrNoDatabase is returned for a database that does not exist.
	ErrNoDatabase = errs.ErrNoDatabase
	// ErrDirInUse is returned when another node holds the data directory.
	ErrDirInUse = errs.ErrDirInUse
	// ErrNodeExists is returned by AddVoter when the ID or the address
	// already belongs to another member.
	ErrNodeExists = errs.ErrNodeExists
	// ErrNoSuchNode is returned for a node ID that is not a member.
	ErrNoSuchNode = errs.ErrNoSuchNode
	// ErrLastVoter is returned by RemoveNode for the cluster's only voter.
	ErrLastVoter = errs.ErrLastVoter
	// ErrRefused is returned, before anything ran, for a statement that
	// would write outside the replicated WAL or break replication: a
	// change to an ATTACHed database, setting journal_mode or
	// locking_mode. DESIGN.md lists what is refused and why.
	ErrRefused = errs.ErrRefused
	// ErrBusy is returned when a statement waited Config.BusyTimeout for
	// a lock (usually the write lock, held by other writers) and gave up.
	// Nothing of that statement was written.
	ErrBusy = errs.ErrBusy
	// ErrInvalidName is returned by Open for a database name that the node
	// cannot use (see Open).
	ErrInvalidName = errs.ErrInvalidName
	// ErrNoLeader is returned when no leader could be found in time: the
	// error says which peers this node could not reach.
	ErrNoLeader = errs.ErrNoLeader
	// ErrNeedsRecovery is returned by New for a data directory that holds
	// databases but no Raft state: starting would replace them, so the
	// node refuses until an operator decides (see New).
	ErrNeedsRecovery = errs.ErrNeedsRecovery
	// ErrNoNode is returned for a data source name that names no node
	// running in this process.
	ErrNoNode = errs.ErrNoNode
	// ErrNotRecoverable is returned by Recover when it refuses: the old
	// cluster still works, the node is running, or the members given do
	// not fit the directory.
	ErrNotRecoverable = errors.New("dqlite: recovery refused")
	// ErrIDClash is returned by New and Recover for a data directory that
	// belongs to a node of another ID.
	ErrIDClash = errors.New("dqlite: data directory belongs to another node")
)

// NotLeaderError is returned on a node that is not the leader, or not a
// ready one, for what only the leader does, and by a client whose
// forwarding is off. errors.Is(err, ErrNotLeader) holds for it; errors.As
// gives the leader.
type NotLeaderError = errs.NotLeaderError
