// Package dqlite replicates SQLite databases across a cluster with Raft.
//
// An application links it in like SQLite itself, with no cgo and no
// external process, and talks to it through database/sql:
//
//	node, err := dqlite.New(dqlite.Config{ID: 1, Address: "127.0.0.1:9001", Dir: dir, Cluster: peers})
//	db, err := node.Open(ctx, "test.db")     // a *sql.DB
//	tx, err := db.BeginTx(ctx, nil)
//	tx.ExecContext(ctx, "INSERT INTO t VALUES (?, datetime('now'), random())", 1)
//	err = tx.Commit()                        // returns once a Raft quorum has the frames
//
// What is replicated is not SQL text but the WAL frames (page images) that
// SQLite writes for each transaction, so any SQL gives the same bytes on
// every node: interactive transactions, savepoints, triggers, random(),
// datetime('now').
//
// # The application's duties
//
//   - Give every node a unique non-zero ID and its own data directory.
//     Bootstrap a new cluster once, with the same peers on every initial
//     member (Config.Cluster, or Node.Bootstrap when ports are chosen at
//     run time). Restart a node on its data directory to rejoin.
//   - Write on any node: a follower runs each write transaction, whole,
//     on the leader (Node.OpenWith with DBOptions.NoForwarding turns that
//     off: writes there then fail with an error matching ErrNotLeader,
//     whose *NotLeaderError names the leader). Reads run on the node's
//     own copy and see only committed transactions; what was written
//     through a node, that node reads back at once. A follower may lag
//     behind writes made through other nodes: carry a commit index
//     (WithCommitIndex, WithAfter), or read at ReadLinearizable
//     (WithReadLevel), where that matters. Programs that are no member of
//     the cluster open "dqlite://host:port,…/name" with database/sql.
//   - Write concurrently if you like: the leader pipelines commits (a
//     transaction starts while earlier ones replicate, and one Raft round
//     carries them all). A read-write transaction on the leader sees the
//     writes of transactions still replicating and commits only if they
//     do; every other read waits for them.
//   - Treat ErrLeadershipLost and ErrNoQuorum on Commit as "outcome
//     unknown": the transaction is then either on every node or on none,
//     and the cluster settles which once a quorum is back. Other errors
//     mean nothing was written.
//   - Keep writes inside the replicated database: a write to an ATTACHed
//     file, or a change of journal_mode or locking_mode, would not reach
//     the other nodes and fails with ErrRefused before it runs.
//   - Close the node when done: open transactions are rolled back and the
//     files closed.
//
// # Data directory
//
// A node's directory holds each database (name, name-wal, name-shm), the
// applied log of each (applied/name.rec: which Raft entry its files hold),
// the Raft log and stable store (raft-wal/, or raft.db with Config.LogStore
// "bolt"), the snapshot store (snapshots/: a copy of each database as of
// the latest snapshot) and a lock file that keeps a second node off the
// directory and records the node's ID (ErrIDClash for another). On start, a node opens its databases at the Raft index their
// files hold and applies only the later entries; files it cannot trust
// (after a machine crash, say) are rebuilt from the snapshot and the log.
//
// # Operating
//
// Node.Backup writes a database as a plain SQLite file, on any node while
// writes go on; Node.Dump writes SQL text; Node.Restore replaces a
// database's content with a SQLite file's in one replicated transaction.
// Recover makes the survivors of a cluster that lost its quorum for good
// a new cluster. Config.TLS turns on mutual TLS for every connection
// (LoadTLS reads PEM files). The dqlite command (cmd/dqlite) is the shell
// over all of these.
//
// # Watching and steering
//
// Node.Status describes a node and the cluster it sees. Config.Metrics
// registers Prometheus metrics; Config.HTTPAddress serves an HTTP/JSON API
// (/db/execute, /db/query, /status, /readyz, /metrics) shaped like
// rqlite's. Members are voters, standbys or spares (Node.AddNode,
// Node.Assign), and with Config.Roles the leader keeps the numbers of
// each it is told to. Node.Subscribe delivers a database's committed
// transactions, with the tables and rowids they changed, on any node.
package dqlite
