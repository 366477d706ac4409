package dqlite

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ncruces/go-sqlite3"
)

// A connection that is being opened when its node loses leadership must
// not crash the node: the node can see the connection (to close it on
// shutdown) before it is whole. Leadership moves in a loop while every
// node's pool opens a fresh connection for each query.
func TestNode_ConnectionsOpenWhileLeadershipMoves(t *testing.T) {
	c := newCluster(t, 3)
	l := c.waitLeader()
	mustExec(t, c.db(l, "test.db"), `CREATE TABLE t (id INTEGER PRIMARY KEY)`)
	for i := range c.nodes {
		c.db(i, "test.db").SetMaxIdleConns(0)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	// However the test ends, the readers stop before the cluster does.
	defer func() { cancel(); wg.Wait() }()
	var opened atomic.Int64
	for i := range c.nodes {
		db := c.db(i, "test.db")
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				var n int64
				if err := db.QueryRowContext(ctx, `SELECT count(*) FROM t`).Scan(&n); err == nil {
					opened.Add(1)
				} else {
					time.Sleep(time.Millisecond) // no busy loop while a node changes role
				}
			}
		}()
	}
	// Until leadership has moved 100 times with connections opening all
	// along (the old bug crashed within 2 s under -race).
	transfers := 0
	deadline := time.Now().Add(90 * time.Second)
	for transfers < 100 || opened.Load() < 5000 {
		if time.Now().After(deadline) {
			t.Fatalf("only %d leadership transfers and %d connections in 90s", transfers, opened.Load())
		}
		l := c.waitLeaderWithin(60 * time.Second)
		tctx, tcancel := context.WithTimeout(context.Background(), 10*time.Second)
		if err := c.nodes[l].TransferLeadership(tctx, 0); err == nil {
			transfers++
		}
		tcancel()
	}
	cancel()
	wg.Wait()
	t.Logf("%d transfers, %d connections opened", transfers, opened.Load())
	l = c.waitLeader()
	o := newOutcome()
	_, err := c.db(l, "test.db").Exec(`INSERT INTO t VALUES (1)`)
	o.record(1, err)
	c.check("test.db", `SELECT id FROM t`, o)
}

// A node whose data directory holds databases but lost its Raft log must
// not start a new cluster over them (nor rejoin and replace them).
func TestNode_RefusesDatabasesWithoutRaftState(t *testing.T) {
	c := newCluster(t, 1)
	db := c.db(0, "test.db")
	mustExec(t, db, `CREATE TABLE t (id INTEGER PRIMARY KEY)`)
	mustExec(t, db, `INSERT INTO t VALUES (1), (2), (3)`)
	if err := c.nodes[0].Checkpoint(context.Background(), "test.db"); err != nil {
		t.Fatal(err)
	}
	dir := c.cfgs[0].Dir
	c.stop(0)
	before, err := os.ReadFile(filepath.Join(dir, "test.db"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(filepath.Join(dir, "raft-wal")); err != nil {
		t.Fatal(err)
	}
	for _, withCluster := range []bool{true, false} {
		cfg := c.cfgs[0]
		cfg.Address = "127.0.0.1:0"
		if !withCluster {
			cfg.Cluster = nil
		} else {
			cfg.Cluster = []Peer{{ID: cfg.ID, Address: cfg.Address}}
		}
		n, err := New(cfg)
		if err == nil {
			n.Close()
			t.Fatalf("Cluster set %v: a node started over databases without Raft state", withCluster)
		}
		if !errors.Is(err, ErrNeedsRecovery) || !strings.Contains(err.Error(), "test.db") {
			t.Fatalf("Cluster set %v: %v, want ErrNeedsRecovery naming test.db", withCluster, err)
		}
	}
	after, err := os.ReadFile(filepath.Join(dir, "test.db"))
	if err != nil || !bytes.Equal(before, after) {
		t.Fatalf("the database file changed (%v)", err)
	}
}

// Writes that would not be replicated, or would break replication, are
// refused before they run, with an error that says why; what is allowed on
// purpose still works.
func TestDriver_RefusesWritesOutsideTheReplicatedWAL(t *testing.T) {
	c := newCluster(t, 3)
	l := c.waitLeader()
	db := c.db(l, "test.db")
	conn := mustConn(t, db)
	ctx := context.Background()
	other := filepath.Join(t.TempDir(), "other.db")
	local, err := sqlite3.Open(other) // a file of this node only
	if err != nil {
		t.Fatal(err)
	}
	if err := local.Exec(`CREATE TABLE x (v)`); err != nil {
		t.Fatal(err)
	}
	local.Close()
	o := newOutcome()
	if _, err := conn.ExecContext(ctx, `CREATE TABLE t (id INTEGER PRIMARY KEY)`); err != nil {
		t.Fatal(err)
	}
	_, err = conn.ExecContext(ctx, `INSERT INTO t VALUES (1)`)
	o.record(1, err)
	if _, err := conn.ExecContext(ctx, `ATTACH DATABASE '`+other+`' AS other`); err != nil {
		t.Fatalf("attach: %v", err)
	}
	for _, q := range []string{
		`CREATE TABLE other.y (v)`,
		`INSERT INTO other.x VALUES (1)`,
		`DROP TABLE other.x`,
		`PRAGMA journal_mode=DELETE`,
		`PRAGMA main.journal_mode=MEMORY`,
		`PRAGMA locking_mode=EXCLUSIVE`,
	} {
		if _, err := conn.ExecContext(ctx, q); !errors.Is(err, ErrRefused) {
			t.Errorf("%s: %v, want ErrRefused", q, err)
		}
	}
	// Prepared, with arguments, and inside a transaction.
	if _, err := conn.ExecContext(ctx, `INSERT INTO other.x VALUES (?)`, 1); !errors.Is(err, ErrRefused) {
		t.Errorf("insert into an attached database: %v, want ErrRefused", err)
	}
	tx, err := conn.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err = tx.Exec(`INSERT INTO t VALUES (2)`); err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(`DELETE FROM other.x`); !errors.Is(err, ErrRefused) {
		t.Errorf("delete in an attached database: %v, want ErrRefused", err)
	}
	if err := tx.Rollback(); err != nil {
		t.Fatal(err)
	}
	o.record(2, errors.New("rolled back"))

	// Allowed on purpose: reading pragmas and attached files, the
	// connection's own temp tables, VACUUM INTO a local file.
	var mode string
	if err := conn.QueryRowContext(ctx, `PRAGMA journal_mode`).Scan(&mode); err != nil || mode != "wal" {
		t.Errorf("journal_mode reads %q, %v", mode, err)
	}
	if _, err := conn.ExecContext(ctx, `SELECT count(*) FROM other.sqlite_schema`); err != nil {
		t.Errorf("read from an attached database: %v", err)
	}
	if _, err := conn.ExecContext(ctx, `CREATE TEMP TABLE scratch (v); INSERT INTO scratch VALUES (1)`); err != nil {
		t.Errorf("temp table: %v", err)
	}
	backup := filepath.Join(t.TempDir(), "backup.db")
	if _, err := conn.ExecContext(ctx, `VACUUM INTO '`+backup+`'`); err != nil {
		t.Errorf("VACUUM INTO: %v", err)
	} else if st, err := os.Stat(backup); err != nil || st.Size() == 0 {
		t.Errorf("VACUUM INTO wrote nothing: %v", err)
	}
	conn.ExecContext(ctx, `DETACH DATABASE other`)
	conn.Close()
	c.check("test.db", `SELECT id FROM t`, o)
}

// A database file damaged while its node was down is replaced by the
// cluster's copy when the node starts again, with a warning in the log.
func TestNode_DamagedDatabaseFileIsRebuilt(t *testing.T) {
	var logs syncBuffer
	c := newCluster(t, 3, func(cfg *Config) {
		cfg.Logger = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelWarn}))
	})
	l := c.waitLeader()
	db := c.db(l, "test.db")
	mustExec(t, db, `CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)`)
	o := newOutcome()
	for i := int64(1); i <= 20; i++ {
		_, err := db.Exec(`INSERT INTO t VALUES (?, 'row')`, i)
		o.record(i, err)
	}
	f := (l + 1) % 3
	c.check("test.db", `SELECT id FROM t`, o) // the follower has every row
	c.stop(f)
	path := filepath.Join(c.cfgs[f].Dir, "test.db")
	file, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	file.WriteAt(bytes.Repeat([]byte{0xAB}, 512), 0) // the header is gone
	file.Close()
	c.restart(f)
	waitFor(t, 20*time.Second, "the follower's rebuilt copy", func() bool {
		var n int
		err := c.db(f, "test.db").QueryRow(`SELECT count(*) FROM t`).Scan(&n)
		return err == nil && n == 20
	})
	if !strings.Contains(logs.String(), "level=WARN") || !strings.Contains(logs.String(), "test.db") {
		t.Errorf("no warning about the replaced file; log:\n%s", logs.String())
	}
	c.check("test.db", `SELECT id FROM t`, o)
}

// Bad database names fail at once, with one clear error, and never reach
// the log or the disk.
func TestNode_InvalidDatabaseNames(t *testing.T) {
	c := newCluster(t, 1)
	for _, name := range []string{
		"", ".", "..", "lock", "LOCK", "raft.db", "snapshots", "raft-wal", "x.db-wal", "x.db-shm", "x.db-journal",
		"a/b", `a\b`, "a\x00b", "a:b", "nul", "con.db", "x.", "x ", strings.Repeat("x", 201), "\xff",
	} {
		start := time.Now()
		_, err := c.nodes[0].Open(context.Background(), name)
		if !errors.Is(err, ErrInvalidName) {
			t.Errorf("Open(%q): %v, want ErrInvalidName", name, err)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("Open(%q) took %v", name, d)
		}
	}
	entries, _ := os.ReadDir(c.cfgs[0].Dir)
	for _, e := range entries {
		if n := e.Name(); n != "raft-wal" && n != "lock" && n != "snapshots" && n != "applied" {
			t.Errorf("unexpected file %s in the data directory", n)
		}
	}
	if db, err := c.nodes[0].Open(context.Background(), "ok name.db"); err != nil {
		t.Errorf("a good name: %v", err)
	} else {
		db.Close()
	}
}

// Open on a node whose peers never come up returns within OpenTimeout
// (the context has no deadline) and names the peers it cannot reach.
func TestNode_OpenWithoutPeersSaysWhy(t *testing.T) {
	ports := freePorts(t, 3)
	peers := []Peer{{ID: 1, Address: ports[0]}, {ID: 2, Address: ports[1]}, {ID: 3, Address: ports[2]}}
	n, err := New(Config{ID: 1, Address: ports[0], Dir: t.TempDir(), Cluster: peers,
		OpenTimeout: 2 * time.Second, HeartbeatTimeout: 200 * time.Millisecond, ElectionTimeout: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	_, err = n.Open(context.Background(), "test.db")
	if !errors.Is(err, ErrNoLeader) || !strings.Contains(err.Error(), ports[1]) || !strings.Contains(err.Error(), ports[2]) {
		t.Fatalf("Open: %v, want ErrNoLeader naming %s and %s", err, ports[1], ports[2])
	}
	t.Log(err)
}

// A statement that waits for the write lock longer than BusyTimeout fails
// with ErrBusy, and nothing of it is written.
func TestDriver_BusyTimeout(t *testing.T) {
	c := newCluster(t, 1, func(cfg *Config) { cfg.BusyTimeout = 200 * time.Millisecond })
	db := c.db(0, "test.db")
	mustExec(t, db, `CREATE TABLE t (id INTEGER PRIMARY KEY)`)
	tx, err := db.Begin() // holds the write lock on the leader
	if err != nil {
		t.Fatal(err)
	}
	o := newOutcome()
	_, err = tx.Exec(`INSERT INTO t VALUES (1)`)
	o.record(1, err)
	_, err = db.Exec(`INSERT INTO t VALUES (2)`)
	if !errors.Is(err, ErrBusy) {
		t.Fatalf("second writer: %v, want ErrBusy", err)
	}
	o.record(2, err)
	o.record(1, tx.Commit())
	c.check("test.db", `SELECT id FROM t`, o)
}

// syncBuffer is a bytes.Buffer that loggers on several goroutines share.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// freePorts returns n addresses on 127.0.0.1 that were free a moment ago.
func freePorts(t *testing.T, n int) []string {
	var addrs []string
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addrs = append(addrs, l.Addr().String())
		l.Close()
	}
	return addrs
}

// Closing a cluster normally logs no error.
func TestNode_CloseLogsNoError(t *testing.T) {
	var logs syncBuffer
	c := newCluster(t, 3, func(cfg *Config) {
		cfg.Logger = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelError}))
	})
	l := c.waitLeader()
	mustExec(t, c.db(l, "test.db"), `CREATE TABLE t (id INTEGER PRIMARY KEY); INSERT INTO t VALUES (1)`)
	c.check("test.db", `SELECT id FROM t`, nil)
	// The leader first: a leader that outlives a follower sends it an
	// append within CommitTimeout (2 ms), and hashicorp/raft logs the
	// refused connection as an error.
	c.stop(l)
	c.close()
	if s := logs.String(); s != "" {
		t.Errorf("a normal Close logged errors:\n%s", s)
	}
}
