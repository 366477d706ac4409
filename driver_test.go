package dqlite

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"math"
	"testing"
	"time"

	"github.com/ncruces/go-sqlite3"

	"github.com/godqlite/dqlite/driver"
)

func TestDriver_TypesRoundTripOnEveryNode(t *testing.T) {
	c := newCluster(t, 3)
	l := c.waitLeader()
	db := c.db(l, "test.db")
	mustExec(t, db, `CREATE TABLE v (id INTEGER PRIMARY KEY, i INT, f REAL, s TEXT, b BLOB, n, ts DATETIME, ok BOOLEAN)`)
	ts := time.Date(2026, 11, 30, 12, 0, 0, 123456789, time.UTC)
	blob := []byte{0, 1, 2, 255}
	mustExec(t, db, `INSERT INTO v VALUES (1, ?, ?, ?, ?, ?, ?, ?)`, int64(math.MinInt64), math.Pi, "héllo\x00wörld", blob, nil, ts, true)
	c.check("test.db", `SELECT id FROM v`, nil)
	for i := range c.nodes {
		var (
			iv  int64
			fv  float64
			sv  string
			bv  []byte
			nv  any
			tv  time.Time
			okv bool
		)
		err := c.db(i, "test.db").QueryRow(`SELECT i, f, s, b, n, ts, ok FROM v`).Scan(&iv, &fv, &sv, &bv, &nv, &tv, &okv)
		if err != nil {
			t.Fatal(err)
		}
		if iv != math.MinInt64 || fv != math.Pi || sv != "héllo\x00wörld" || !bytes.Equal(bv, blob) || nv != nil || !tv.Equal(ts) || !okv {
			t.Errorf("node %d read back %v %v %q %v %v %v %v", i+1, iv, fv, sv, bv, nv, tv, okv)
		}
	}
}

func TestDriver_PreparedStatements(t *testing.T) {
	c := newCluster(t, 3)
	l := c.waitLeader()
	db := c.db(l, "test.db")
	mustExec(t, db, `CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)`)
	ins, err := db.Prepare(`INSERT INTO t VALUES (?, ?)`)
	if err != nil {
		t.Fatal(err)
	}
	defer ins.Close()
	o := newOutcome()
	for i := int64(1); i <= 50; i++ {
		_, err := ins.Exec(i, "v")
		o.record(i, err)
	}
	sel, err := db.Prepare(`SELECT v FROM t WHERE id = :id`)
	if err != nil {
		t.Fatal(err)
	}
	defer sel.Close()
	var v string
	if err := sel.QueryRow(sqlNamed("id", 7)).Scan(&v); err != nil || v != "v" {
		t.Fatalf("named parameter: %q, %v", v, err)
	}
	// With forwarding off, a prepared write on a follower fails when it
	// runs, naming the leader.
	f := c.dbNoFwd((l+1)%3, "test.db")
	waitFor(t, 10*time.Second, "the table on the follower", func() bool { _, err := f.Exec(`SELECT * FROM t`); return err == nil })
	fins, err := f.Prepare(`INSERT INTO t VALUES (?, ?)`)
	if err != nil {
		t.Fatal(err)
	}
	defer fins.Close()
	if _, err := fins.Exec(1000, "x"); !errors.Is(err, ErrNotLeader) {
		t.Fatalf("prepared write on follower: %v", err)
	}
	o.record(1000, errors.New("rejected"))
	c.check("test.db", `SELECT id FROM t`, o)
}

func TestDriver_ReturningAndReadOnlyTx(t *testing.T) {
	c := newCluster(t, 3)
	db := c.db(c.waitLeader(), "test.db")
	mustExec(t, db, `CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)`)
	var id int64
	if err := db.QueryRow(`INSERT INTO t (v) VALUES ('r') RETURNING id`).Scan(&id); err != nil || id != 1 {
		t.Fatalf("INSERT RETURNING: %d, %v", id, err)
	}
	tx, err := db.BeginTx(context.Background(), &sqlTxOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(`INSERT INTO t (v) VALUES ('no')`); err == nil {
		t.Fatal("write in a read-only transaction succeeded")
	}
	tx.Rollback()
	o := newOutcome()
	o.record(1, nil)
	o.record(2, errors.New("read-only"))
	c.check("test.db", `SELECT id FROM t`, o)
}

func TestDriver_ContextCancellation(t *testing.T) {
	c := newCluster(t, 3)
	db := c.db(c.waitLeader(), "test.db")
	mustExec(t, db, `CREATE TABLE t (id INTEGER PRIMARY KEY)`)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err := db.ExecContext(ctx, `WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r) INSERT INTO t SELECT i FROM r`)
	if err == nil {
		t.Fatal("endless statement was not interrupted")
	}
	if !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, sqlite3.INTERRUPT) {
		t.Fatalf("interrupted statement: %v", err)
	}
	mustExec(t, db, `INSERT INTO t VALUES (1)`)
	o := newOutcome()
	o.record(1, nil)
	o.record(2, errors.New("interrupted"))
	c.check("test.db", `SELECT id FROM t`, o)
}

func TestDriver_ConnRaw(t *testing.T) {
	c := newCluster(t, 1)
	conn, err := c.db(0, "test.db").Conn(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	err = conn.Raw(func(dc any) error {
		raw := dc.(interface{ Raw() *sqlite3.Conn }).Raw()
		if !raw.GetAutocommit() {
			return errors.New("not in autocommit mode")
		}
		return raw.Exec(`CREATE TABLE t (x)`)
	})
	if err != nil {
		t.Fatal(err)
	}
	c.check("test.db", `SELECT rowid FROM t`, nil)
}

func TestDriver_RegisteredName(t *testing.T) {
	c := newCluster(t, 1)
	c.db(0, "test.db")
	db, err := sql.Open(driver.Name, c.nodes[0].Address()+"/test.db")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	mustExec(t, db, `CREATE TABLE t (id INTEGER PRIMARY KEY)`)
	mustExec(t, db, `INSERT INTO t VALUES (1)`)
	for dsn, want := range map[string]error{
		"no-slash":                         nil,
		"127.0.0.1:1/test.db":              ErrNoNode,
		c.nodes[0].Address() + "/x.db-wal": ErrInvalidName,
	} {
		bad, err := sql.Open(driver.Name, dsn)
		if err == nil {
			err = bad.Ping()
			bad.Close()
		}
		if err == nil || (want != nil && !errors.Is(err, want)) {
			t.Errorf("data source name %q: %v, want %v", dsn, err, want)
		}
	}
	c.check("test.db", `SELECT id FROM t`, nil)
}
