package dqlite

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"
)

func TestCluster_MalformedSQL(t *testing.T) {
	c := newCluster(t, 3)
	db := c.db(c.waitLeader(), "test.db")
	mustExec(t, db, `CREATE TABLE t (id INTEGER PRIMARY KEY)`)
	mustExec(t, db, `INSERT INTO t VALUES (1)`)
	for _, q := range []string{`INSERT INTO t VALUES (`, `SELEC 1`, `INSERT INTO missing VALUES (1)`, `INSERT INTO t VALUES (1)`} {
		if _, err := db.Exec(q); err == nil {
			t.Errorf("%q: no error", q)
		}
	}
	// A failing statement inside a transaction leaves the rest to commit.
	tx, _ := db.Begin()
	tx.Exec(`INSERT INTO t VALUES (2)`)
	if _, err := tx.Exec(`INSERT INTO t VALUES (2)`); err == nil {
		t.Error("duplicate key: no error")
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	o := newOutcome()
	o.record(1, nil)
	o.record(2, nil)
	c.check("test.db", `SELECT id FROM t`, o)
}

func TestCluster_FollowerRejectsWriteTransactions(t *testing.T) {
	c := newCluster(t, 3)
	l := c.waitLeader()
	mustExec(t, c.db(l, "test.db"), `CREATE TABLE t (id INTEGER PRIMARY KEY)`)
	f := c.dbNoFwd((l+1)%3, "test.db") // forwarding off: a write fails
	waitFor(t, 10*time.Second, "the table on the follower", func() bool {
		_, err := f.Exec(`SELECT * FROM t`)
		return err == nil
	})
	// Reads work in a transaction; the first write fails and nothing ran.
	tx, err := f.Begin()
	if err != nil {
		t.Fatal(err)
	}
	var n int
	if err := tx.QueryRow(`SELECT count(*) FROM t`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(`INSERT INTO t VALUES (1)`); !errors.Is(err, ErrNotLeader) {
		t.Fatalf("write in a follower transaction: %v", err)
	}
	tx.Rollback()
	for _, q := range []string{`BEGIN IMMEDIATE`, `CREATE TABLE u (x)`, `SELECT 1; DELETE FROM t`} {
		if _, err := f.Exec(q); !errors.Is(err, ErrNotLeader) {
			t.Errorf("%q on a follower: %v", q, err)
		}
	}
	c.check("test.db", `SELECT id FROM t`, nil)
}

func TestCluster_TransactionTooLarge(t *testing.T) {
	c := newCluster(t, 3, func(cfg *Config) { cfg.MaxTxSize = 1 << 20 })
	db := c.db(c.waitLeader(), "test.db")
	mustExec(t, db, `CREATE TABLE t (id INTEGER PRIMARY KEY, b BLOB)`)
	mustExec(t, db, `INSERT INTO t VALUES (1, randomblob(1000))`)
	_, err := db.Exec(`INSERT INTO t SELECT value + 1, randomblob(4000) FROM generate_series(1, 1000)`)
	if !errors.Is(err, ErrTxTooLarge) {
		t.Fatalf("oversized transaction: got %v, want ErrTxTooLarge", err)
	}
	// The connection and the node keep working.
	mustExec(t, db, `INSERT INTO t VALUES (5000, x'00')`)
	o := newOutcome()
	o.record(1, nil)
	o.record(5000, nil)
	o.record(2, err)
	c.check("test.db", `SELECT id FROM t`, o)
}

func TestNode_UseAfterClose(t *testing.T) {
	c := newCluster(t, 3)
	l := c.waitLeader()
	f := (l + 1) % 3
	mustExec(t, c.db(l, "test.db"), `CREATE TABLE t (id INTEGER PRIMARY KEY)`)
	n := c.nodes[f]
	db, err := n.Open(context.Background(), "test.db")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Exec(`SELECT 1`); err != nil {
		t.Fatal(err)
	}
	c.stop(f)
	if _, err := db.Exec(`SELECT 1`); !errors.Is(err, ErrClosed) {
		t.Errorf("query after Close: %v", err)
	}
	if _, err := n.Open(context.Background(), "test.db"); !errors.Is(err, ErrClosed) {
		t.Errorf("Open after Close: %v", err)
	}
	if err := n.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	c.restart(f)
	c.check("test.db", `SELECT id FROM t`, nil)
}

func TestNode_SecondNodeOnSameDir(t *testing.T) {
	c := newCluster(t, 1)
	cfg := c.cfgs[0]
	cfg.ID = 2
	cfg.Address = "127.0.0.1:0"
	cfg.Cluster = nil
	cfg.Listener = nil
	_, err := New(cfg)
	if !errors.Is(err, ErrDirInUse) {
		t.Fatalf("second node on %s: got %v, want ErrDirInUse", cfg.Dir, err)
	}
	// The first node is untouched.
	mustExec(t, c.db(0, "test.db"), `CREATE TABLE t (id INTEGER PRIMARY KEY)`)
	c.check("test.db", `SELECT id FROM t`, nil)
}

func TestConfig_ValidateReportsEverything(t *testing.T) {
	err := Config{PageSize: 1000, Cluster: []Peer{{ID: 1, Address: "a:1"}, {ID: 1, Address: "a:1"}}}.Validate()
	if err == nil {
		t.Fatal("no error")
	}
	for _, want := range []string{"ID must be non-zero", "Address", "Dir is required", "PageSize 1000", "node ID 1 twice", "address a:1 twice", "does not include this node"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
	ok := Config{ID: 1, Address: "127.0.0.1:9001", Dir: t.TempDir()}
	if err := ok.Validate(); err != nil {
		t.Fatalf("valid config rejected: %v", err)
	}
}

func TestNode_CorruptRaftLog(t *testing.T) {
	dir := t.TempDir()
	if err := writeFile(dir+"/raft.db", []byte("this is not a bolt database, just garbage bytes............")); err != nil {
		t.Fatal(err)
	}
	_, err := New(Config{ID: 1, Address: "127.0.0.1:0", Dir: dir})
	if err == nil || !strings.Contains(err.Error(), "raft log") {
		t.Fatalf("corrupt raft.db: got %v", err)
	}
}
