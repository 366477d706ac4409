package dqlite

import (
	"context"
	"errors"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// addNode starts a new node with an empty data directory and no cluster:
// it waits to be added.
func (c *cluster) addNode(opts ...func(*Config)) int {
	c.t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		c.t.Fatal(err)
	}
	i := len(c.cfgs)
	c.net.mu.Lock()
	c.net.addrs = append(c.net.addrs, l.Addr().String())
	c.net.mu.Unlock()
	cfg := c.cfgs[0]
	cfg.ID, cfg.Address, cfg.Dir, cfg.Cluster, cfg.Dial = NodeID(i+1), l.Addr().String(), c.t.TempDir(), nil, c.net.dialer(i)
	for _, o := range opts {
		o(&cfg)
	}
	c.cfgs = append(c.cfgs, cfg)
	c.start(i, l)
	return i
}

func snapshotIndex(n *Node) uint64 {
	v, _ := strconv.ParseUint(n.raft.Stats()["last_snapshot_index"], 10, 64)
	return v
}

// writeRows inserts rows [from, to) from 4 goroutines on the leader.
func writeRows(t *testing.T, c *cluster, o *outcome, from, to int64, blob int) {
	t.Helper()
	db := c.db(c.waitLeader(), "test.db")
	var wg sync.WaitGroup
	for w := range int64(4) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for id := from + w; id < to; id += 4 {
				_, err := db.Exec(`INSERT INTO t VALUES (?, randomblob(?))`, id, blob)
				for errors.Is(err, ErrBusy) { // nothing was written: a loaded machine, try again
					_, err = db.Exec(`INSERT INTO t VALUES (?, randomblob(?))`, id, blob)
				}
				if err != nil {
					t.Errorf("insert %d: %v", id, err)
					return
				}
				o.record(id, err)
			}
		}()
	}
	wg.Wait()
}

func TestCluster_Membership(t *testing.T) {
	// BoltDB: raft-wal drops its log a segment at a time, and the new node
	// would catch up from the log rather than by the snapshot tested here.
	c := newCluster(t, 3, func(cfg *Config) { cfg.SnapshotThreshold, cfg.TrailingLogs, cfg.LogStore = 100, 20, "bolt" })
	l := c.waitLeader()
	mustExec(t, c.db(l, "test.db"), `CREATE TABLE t (id INTEGER PRIMARY KEY, b BLOB)`)
	o := newOutcome()
	writeRows(t, c, o, 0, 400, 100)
	if err := c.nodes[l].raft.Snapshot().Error(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	leader := c.nodes[l]
	f := c.nodes[(l+1)%3]

	// Membership calls on a follower name the leader.
	var nl *NotLeaderError
	if err := f.AddVoter(ctx, 9, "127.0.0.1:1"); !errors.As(err, &nl) || nl.LeaderAddress != leader.Address() {
		t.Fatalf("AddVoter on a follower: %v", err)
	}
	// Duplicates.
	if err := leader.AddVoter(ctx, f.ID(), "127.0.0.1:1"); !errors.Is(err, ErrNodeExists) {
		t.Fatalf("duplicate ID: %v", err)
	}
	if err := leader.AddVoter(ctx, 9, f.Address()); !errors.Is(err, ErrNodeExists) {
		t.Fatalf("duplicate address: %v", err)
	}
	if err := leader.RemoveNode(ctx, 42); !errors.Is(err, ErrNoSuchNode) {
		t.Fatalf("remove unknown node: %v", err)
	}

	// A new node joins, gets a snapshot (the log was compacted) and serves reads.
	i := c.addNode()
	if err := leader.AddVoter(ctx, c.nodes[i].ID(), c.nodes[i].Address()); err != nil {
		t.Fatal(err)
	}
	writeRows(t, c, o, 400, 420, 100)
	c.check("test.db", `SELECT id FROM t`, o)
	if snapshotIndex(c.nodes[i]) == 0 {
		t.Error("the new node caught up without a snapshot")
	}
	members, err := leader.Members(ctx)
	if err != nil || len(members) != 4 {
		t.Fatalf("members: %v, %v", members, err)
	}

	// Transfer leadership to the new node, then remove the old leader.
	if err := leader.TransferLeadership(ctx, c.nodes[i].ID()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "the new node to lead", func() bool { return c.nodes[i].IsLeader() })
	if err := c.nodes[i].RemoveNode(ctx, leader.ID()); err != nil {
		t.Fatal(err)
	}
	c.stop(l)
	writeRows(t, c, o, 420, 440, 100)
	c.check("test.db", `SELECT id FROM t`, o)
}

func TestNode_RemoveLastVoter(t *testing.T) {
	c := newCluster(t, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.nodes[0].RemoveNode(ctx, 1); !errors.Is(err, ErrLastVoter) {
		t.Fatalf("remove last voter: %v", err)
	}
}

func TestCluster_FollowerCatchesUpFromLog(t *testing.T) {
	c := newCluster(t, 3, func(cfg *Config) { cfg.SnapshotThreshold, cfg.TrailingLogs, cfg.MaxLogBytes = 1<<20, 1<<20, 1<<40 })
	l := c.waitLeader()
	mustExec(t, c.db(l, "test.db"), `CREATE TABLE t (id INTEGER PRIMARY KEY, b BLOB)`)
	f := (l + 1) % 3
	c.stop(f)
	o := newOutcome()
	rows := int64(10000)
	if raceEnabled {
		rows = 2000 // the race detector slows every commit tenfold
	}
	writeRows(t, c, o, 0, rows, 16)
	c.restart(f)
	c.check("test.db", `SELECT id FROM t`, o)
	if snapshotIndex(c.nodes[f]) != 0 {
		t.Error("the follower installed a snapshot instead of reading the log")
	}
}

func TestCluster_FollowerCatchesUpBySnapshot(t *testing.T) {
	if testing.Short() || raceEnabled {
		t.Skip("writes a 50 MB database: run without -short and -race")
	}
	c := newCluster(t, 3, func(cfg *Config) { cfg.SnapshotThreshold, cfg.TrailingLogs = 1<<20, 10 })
	l := c.waitLeader()
	mustExec(t, c.db(l, "test.db"), `CREATE TABLE t (id INTEGER PRIMARY KEY, b BLOB)`)
	f := (l + 1) % 3
	c.stop(f)
	o := newOutcome()
	writeRows(t, c, o, 0, 200, 256<<10) // 200 transactions of 256 KiB: 50 MiB
	for i, n := range c.nodes {
		if n != nil {
			if err := n.raft.Snapshot().Error(); err != nil {
				t.Fatalf("snapshot on node %d: %v", i+1, err)
			}
		}
	}
	c.restart(f)
	c.check("test.db", `SELECT id FROM t`, o)
	if snapshotIndex(c.nodes[f]) == 0 {
		t.Error("the follower caught up without a snapshot")
	}
	var size int64
	c.db(f, "test.db").QueryRow(`SELECT page_count * page_size FROM pragma_page_count, pragma_page_size`).Scan(&size)
	if size < 50<<20 {
		t.Errorf("database is %d bytes, want at least 50 MiB", size)
	}
}

// The BoltDB log store (raft-wal is the default) works, and a directory
// keeps its kind of log.
func TestCluster_BoltLogStore(t *testing.T) {
	c := newCluster(t, 3, func(cfg *Config) { cfg.LogStore = "bolt" })
	l := c.waitLeader()
	mustExec(t, c.db(l, "test.db"), `CREATE TABLE t (id INTEGER PRIMARY KEY, b BLOB)`)
	o := newOutcome()
	writeRows(t, c, o, 0, 200, 100)
	f := (l + 1) % 3
	c.stop(f)
	writeRows(t, c, o, 200, 300, 100)
	c.restart(f)
	c.check("test.db", `SELECT id FROM t`, o)
	// A directory keeps its kind of log.
	cfg := c.cfgs[f]
	cfg.LogStore, cfg.Listener, cfg.Address, cfg.Cluster = "wal", nil, "127.0.0.1:0", nil
	c.stop(f)
	if _, err := New(cfg); err == nil || !strings.Contains(err.Error(), "another kind") {
		t.Fatalf("reopening a BoltDB directory with LogStore wal: %v", err)
	}
	// Left empty, LogStore is the directory's.
	cfg.LogStore = ""
	if n, err := New(cfg); err != nil {
		t.Fatalf("reopening a BoltDB directory with LogStore empty: %v", err)
	} else {
		n.Close()
	}
	c.restart(f)
	c.check("test.db", `SELECT id FROM t`, o)
}
