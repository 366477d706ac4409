package dqlite

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/godqlite/dqlite/internal/errs"
)

// NodeID identifies a node in a cluster. It must be non-zero and unique.
type NodeID = errs.NodeID

// Peer is a member of a cluster.
type Peer struct {
	ID      NodeID
	Address string // host:port of its Raft transport
	// Role is the member's (Node.Members says); in Config.Cluster, empty
	// means Voter.
	Role Role
}

// Config configures a Node. The zero value of every field but ID, Address
// and Dir means its default (see DefaultConfig).
type Config struct {
	// ID of this node: non-zero and unique in the cluster.
	ID NodeID
	// Address is the host:port the node's Raft transport listens on; other
	// nodes reach it there. Port 0 picks a free port: Node.Address then
	// says which.
	Address string
	// Dir is the node's data directory, created if missing. It holds the
	// databases (name, name-wal, name-shm), their applied logs (applied/),
	// the Raft log (raft-wal/ or raft.db) and the snapshot store (snapshots/).
	Dir string
	// Cluster, when set on a node with no state yet, bootstraps a new
	// cluster of these peers, which must include this node. It is ignored
	// when the directory already holds Raft state. A directory with
	// databases but no Raft state is never bootstrapped over: New fails
	// with ErrNeedsRecovery.
	Cluster []Peer

	// ApplyTimeout bounds how long a commit waits for a Raft quorum.
	// Default 10s.
	ApplyTimeout time.Duration
	// OpenTimeout bounds Node.Open (and a connection's wait for its
	// database) when its context has no deadline. Default 30s.
	OpenTimeout time.Duration
	// BusyTimeout bounds how long a statement waits for a lock, usually
	// the write lock that another transaction holds on the leader; then
	// it fails with an error matching ErrBusy. Default 10s.
	BusyTimeout time.Duration
	// MaxTxSize is the most page data, in bytes, that one transaction may
	// write; more fails with ErrTxTooLarge before anything replicates.
	// Default 64 MiB.
	//
	// A transaction goes to Raft as one log entry, built in memory on the
	// leader, that every node receives, writes and fsyncs before Commit
	// returns, while the write lock is held. Its cost grows faster than
	// its size, because hashicorp/raft's transport decodes a log entry in
	// 256 KiB steps, copying what it has read at each step. On the 2-core
	// machine CI runs on (BenchmarkLargeTransaction, 3 nodes, default
	// timeouts): 14 MiB commits in 0.5 s and allocates 1.25 GB; 58 MiB
	// commits in 2.9 s and allocates 15 GB, mostly short-lived garbage on
	// the followers. Before raising the limit, raise HeartbeatTimeout,
	// ElectionTimeout and ApplyTimeout well above the commit time, or the
	// leader loses leadership while it commits (ErrLeadershipLost); prefer
	// transactions of a few MiB.
	MaxTxSize int64
	// PageSize of databases this node creates. Default 4096.
	PageSize int
	// CheckpointFrames: a node checkpoints a database (and truncates its
	// WAL) once the WAL holds this many frames. Default 1000. A checkpoint
	// that readers or a writer are in the way of is retried after the next
	// commit, and a fully checkpointed WAL is reused from its start, so
	// under a continuous write load a WAL stays under 4 × CheckpointFrames
	// frames (16 MiB with the defaults; TestCluster_CheckpointsBoundWAL
	// measures it, and sees CheckpointFrames plus one transaction).
	CheckpointFrames int

	// HeartbeatTimeout and ElectionTimeout are Raft's (hashicorp/raft's
	// meaning). Default 1s each. LeaderLeaseTimeout defaults to half the
	// heartbeat timeout.
	HeartbeatTimeout   time.Duration
	ElectionTimeout    time.Duration
	LeaderLeaseTimeout time.Duration
	// SnapshotThreshold, SnapshotInterval and TrailingLogs are Raft's:
	// snapshot when this many entries were applied since the last one,
	// checking every interval, and keep this many entries after it.
	// Defaults 8192, 10s and 10240: a restart replays at most about
	// SnapshotThreshold entries plus those of one interval.
	SnapshotThreshold uint64
	SnapshotInterval  time.Duration
	TrailingLogs      uint64
	// MaxLogBytes bounds the Raft log by bytes too: a node takes a
	// snapshot once the entries after the last one hold half of it, and
	// keeps no more trailing entries after a snapshot than hold the other
	// half. Default 64 MiB, so that large transactions do not fill the disk
	// (10,240 trailing entries of 1 MiB are 10 GiB) or, with the BoltDB
	// log, the node's memory (it maps all of raft.db).
	MaxLogBytes int64
	// SnapshotRate bounds, in bytes per second, how fast a node serves a
	// whole snapshot: to a node that needs one (a new or lagging node), and
	// to its own databases when it installs one it received or rebuilds
	// them. An install moves the whole database over the network and
	// through both nodes' disks; unbounded, it takes them from the
	// cluster's commits. Default 128 MiB/s, so an install takes at least
	// twice the database's size at that rate (10 GiB: 5 min 22 s measured
	// with dqlite-bench -workloads scale); negative: unbounded.
	SnapshotRate int64

	// LogStore selects the Raft log: "wal", hashicorp's raft-wal in
	// raft-wal/, or "bolt", hashicorp's BoltDB store in raft.db. Empty (the
	// default) means the store the directory already holds, or "wal" for a
	// new one. A directory keeps the store it was created with. raft-wal
	// syncs once per append (BoltDB twice), writes fewer bytes per commit
	// and maps nothing into memory: with `dqlite-bench -workloads scale` at
	// 1 GiB it committed about twice as many 1-row transactions a second,
	// and its nodes' memory stayed under half of BoltDB's (DESIGN.md, "Raft
	// log").
	LogStore string

	// Logger receives the node's and Raft's logs. Default: silent.
	Logger *slog.Logger

	// Listener, when set, is where the node accepts Raft connections,
	// instead of listening on Address itself; Address must be its address.
	Listener net.Listener
	// Dial, when set, opens the node's Raft connections to other nodes
	// (for example over TLS). Default: TCP.
	Dial func(ctx context.Context, address string) (net.Conn, error)

	// TLS, when set, secures every connection of the node with mutual
	// TLS: Raft's, forwarded writes and remote clients (the client
	// protocol shares the Raft port). Certificates holds the node's
	// certificate, used both to accept and to dial; RootCAs the CAs that
	// sign every member's and client's certificate (ClientCAs, if set, for
	// those it accepts). A peer or client without a certificate those CAs
	// signed, or in plaintext, is refused, and the node logs a warning.
	// A node verifies the certificate of a node it dials against the host
	// of the address it dialed (set ServerName to use another name). A
	// node's certificate must allow server authentication: Raft
	// connections are refused from a certificate that allows client
	// authentication only (in its extended key usage, or its chain's),
	// which may use the client protocol (statements, and the shell's
	// operations) and nothing else. A certificate that names no extended
	// key usage allows every use, so give clients certificates that name
	// client authentication (as dqlite certs does), or sign nodes' and
	// clients' certificates with different CAs.
	// LoadTLS builds one from PEM files. TLS applies on top of Listener
	// and Dial when those are set too.
	TLS *tls.Config
	// Metrics, when set, is where the node registers its Prometheus
	// metrics (all named dqlite_*, labelled with node="ID"): commits and
	// failures by cause, commit latency, statements run locally and
	// forwarded, reads by level, Raft state changes, apply lag, snapshot
	// and checkpoint durations and sizes, database and WAL sizes. The node
	// unregisters them when it closes. Default: no metrics.
	Metrics prometheus.Registerer
	// HTTPAddress, when set, is where the node serves its HTTP/JSON API:
	// /db/execute and /db/query (shaped like rqlite's), /status, /readyz
	// and /metrics (Config.Metrics when it is a prometheus.Gatherer, such
	// as a *prometheus.Registry, else the node's own metrics). A host left
	// out (":4001") means 127.0.0.1: the API is for this machine unless
	// told otherwise. With TLS set, it is served over TLS and refuses
	// clients without a certificate the CAs signed. Without TLS it has
	// no authentication: keep it on loopback. Port 0 picks a free port
	// (Node.HTTPAddress says which). Default: off.
	HTTPAddress string
	// HTTPListener, when set, is where the node serves the HTTP API
	// instead (HTTPAddress is then ignored). The node closes it.
	HTTPListener net.Listener
	// Roles, when set, turns on automatic role management: the leader
	// keeps the number of voters and standbys it says among the members it
	// reaches (see RoleConfig). Every node of the cluster should have the
	// same setting: whichever leads manages. Default: off; roles change
	// only when an operator assigns them (Node.Assign).
	Roles *RoleConfig

	hooks *hooks // fault injection for tests; nil otherwise
}

// hooks let tests stop the write path at precise points.
type hooks struct {
	beforePropose func()                  // before raft.Apply of a batch of transactions
	afterCommit   func()                  // Raft committed a batch; its commits have not returned yet
	beforeBatch   func(queued func() int) // transactions are queued, none in flight
}

// DefaultConfig returns a Config with every default filled in.
func DefaultConfig() Config {
	return Config{
		ApplyTimeout:       10 * time.Second,
		OpenTimeout:        30 * time.Second,
		BusyTimeout:        10 * time.Second,
		MaxTxSize:          64 << 20,
		PageSize:           4096,
		CheckpointFrames:   1000,
		HeartbeatTimeout:   time.Second,
		ElectionTimeout:    time.Second,
		LeaderLeaseTimeout: 500 * time.Millisecond,
		SnapshotThreshold:  8192,
		SnapshotInterval:   10 * time.Second,
		TrailingLogs:       10240,
		MaxLogBytes:        64 << 20,
		SnapshotRate:       128 << 20,
		Logger:             slog.New(slog.DiscardHandler),
	}
}

// withDefaults returns c with zero fields set to their defaults.
func (c Config) withDefaults() Config {
	d := DefaultConfig()
	d.LeaderLeaseTimeout = or(c.HeartbeatTimeout, d.HeartbeatTimeout) / 2
	c.ApplyTimeout = or(c.ApplyTimeout, d.ApplyTimeout)
	c.OpenTimeout = or(c.OpenTimeout, d.OpenTimeout)
	c.BusyTimeout = or(c.BusyTimeout, d.BusyTimeout)
	c.MaxTxSize = or(c.MaxTxSize, d.MaxTxSize)
	c.PageSize = or(c.PageSize, d.PageSize)
	c.CheckpointFrames = or(c.CheckpointFrames, d.CheckpointFrames)
	c.HeartbeatTimeout = or(c.HeartbeatTimeout, d.HeartbeatTimeout)
	c.ElectionTimeout = or(c.ElectionTimeout, d.ElectionTimeout)
	c.LeaderLeaseTimeout = or(c.LeaderLeaseTimeout, d.LeaderLeaseTimeout)
	c.SnapshotThreshold = or(c.SnapshotThreshold, d.SnapshotThreshold)
	c.SnapshotInterval = or(c.SnapshotInterval, d.SnapshotInterval)
	c.TrailingLogs = or(c.TrailingLogs, d.TrailingLogs)
	c.MaxLogBytes = or(c.MaxLogBytes, d.MaxLogBytes)
	c.SnapshotRate = or(c.SnapshotRate, d.SnapshotRate)
	if c.Logger == nil {
		c.Logger = d.Logger
	}
	return c
}

// or returns v, or def when v is the zero value.
func or[T comparable](v, def T) T {
	var zero T
	if v == zero {
		return def
	}
	return v
}

// Validate reports every problem of the configuration at once.
func (c Config) Validate() error {
	c = c.withDefaults()
	var errList []error
	add := func(format string, a ...any) { errList = append(errList, fmt.Errorf("config: "+format, a...)) }
	if c.ID == 0 {
		add("ID must be non-zero")
	}
	if _, _, err := net.SplitHostPort(c.Address); err != nil {
		add("Address %q is not host:port: %v", c.Address, err)
	} else if c.Listener != nil && c.Listener.Addr().String() != c.Address {
		add("Address %s is not the Listener's address %s", c.Address, c.Listener.Addr())
	}
	if c.Dir == "" {
		add("Dir is required")
	}
	if c.Roles != nil {
		if err := c.Roles.validate(); err != nil {
			add("%v", err)
		}
	}
	if c.HTTPAddress != "" {
		if _, _, err := net.SplitHostPort(c.HTTPAddress); err != nil {
			add("HTTPAddress %q is not host:port: %v", c.HTTPAddress, err)
		}
	}
	if c.ApplyTimeout < 0 {
		add("ApplyTimeout %v is negative", c.ApplyTimeout)
	}
	if c.OpenTimeout < 0 {
		add("OpenTimeout %v is negative", c.OpenTimeout)
	}
	if c.BusyTimeout < 0 {
		add("BusyTimeout %v is negative", c.BusyTimeout)
	}
	if c.MaxTxSize < 0 {
		add("MaxTxSize %d is negative", c.MaxTxSize)
	}
	if c.PageSize < 512 || c.PageSize > 65536 || c.PageSize&(c.PageSize-1) != 0 {
		add("PageSize %d is not a power of two from 512 to 65536", c.PageSize)
	}
	if c.CheckpointFrames < 0 {
		add("CheckpointFrames %d is negative", c.CheckpointFrames)
	}
	if c.HeartbeatTimeout < 5*time.Millisecond || c.ElectionTimeout < 5*time.Millisecond {
		add("HeartbeatTimeout and ElectionTimeout must be at least 5ms")
	}
	if c.LeaderLeaseTimeout > c.HeartbeatTimeout {
		add("LeaderLeaseTimeout %v exceeds HeartbeatTimeout %v", c.LeaderLeaseTimeout, c.HeartbeatTimeout)
	}
	if c.TLS != nil && len(c.TLS.Certificates) == 0 && c.TLS.GetCertificate == nil {
		add("TLS has no certificate: a node needs one to accept and to dial")
	}
	if c.TLS != nil && c.TLS.RootCAs == nil {
		add("TLS has no CA (RootCAs): the certificates of the nodes it dials could not be verified")
	}
	if c.LogStore != "" && c.LogStore != "bolt" && c.LogStore != "wal" {
		add("LogStore %q is neither \"bolt\" nor \"wal\"", c.LogStore)
	}
	if c.MaxLogBytes < 0 {
		add("MaxLogBytes %d is negative", c.MaxLogBytes)
	}
	if c.TrailingLogs < 1 {
		add("TrailingLogs must be positive")
	}
	if len(c.Cluster) > 0 {
		ids, addrs, self, voters := map[NodeID]bool{}, map[string]bool{}, false, 0
		for _, p := range c.Cluster {
			if p.ID == 0 {
				add("Cluster has a peer with ID 0")
			}
			if ids[p.ID] {
				add("Cluster names node ID %d twice", p.ID)
			}
			if addrs[p.Address] {
				add("Cluster names address %s twice", p.Address)
			}
			ids[p.ID], addrs[p.Address] = true, true
			if err := checkAddress(p.Address); err != nil {
				add("Cluster: node %d: %v", p.ID, err)
			}
			if p.Role != "" {
				if err := checkRole(p.Role); err != nil {
					add("Cluster: node %d: %v", p.ID, err)
				} else if p.Role != Voter {
					voters--
				}
			}
			if p.ID == c.ID {
				self = true
				if p.Address != c.Address {
					add("Cluster gives node %d address %s, but Address is %s", p.ID, p.Address, c.Address)
				}
			}
		}
		if !self {
			add("Cluster does not include this node (ID %d)", c.ID)
		}
		if voters+len(c.Cluster) == 0 {
			add("Cluster has no voter")
		}
	}
	return errors.Join(errList...)
}
