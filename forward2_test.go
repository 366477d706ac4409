package dqlite

import (
	"bufio"
	"context"
	"database/sql"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/godqlite/dqlite/driver"
	"github.com/godqlite/dqlite/internal/wire"
)

// Regression tests of the client protocol, each from a problem a review
// found.

// Two open result sets of the same SQL in a follower's transaction each
// read their own rows (the leader once stepped one statement for both).
func TestForward_SameQueryTwiceOpen(t *testing.T) {
	c := newCluster(t, 3)
	l := c.waitLeader()
	mustExec(t, c.db(l, "ss.db"), `CREATE TABLE t (id INTEGER PRIMARY KEY, g INTEGER);
		INSERT INTO t(g) SELECT 1 FROM generate_series(1, 2000);
		INSERT INTO t(g) SELECT 2 FROM generate_series(1, 2000)`)
	for _, i := range []int{l, c.follower(l)} {
		tx, err := c.db(i, "ss.db").BeginTx(context.Background(), nil)
		if err != nil {
			t.Fatal(err)
		}
		q := `SELECT g FROM t WHERE g = ?`
		outer, err := tx.Query(q, 1)
		if err != nil {
			t.Fatal(err)
		}
		n, bad := 0, 0
		for outer.Next() {
			var g int
			outer.Scan(&g)
			if g != 1 {
				bad++
			}
			if n == 10 {
				var g2 int
				if err := tx.QueryRow(q, 2).Scan(&g2); err != nil || g2 != 2 {
					t.Fatalf("inner query: %d, %v", g2, err)
				}
			}
			n++
		}
		if err := outer.Err(); bad != 0 || n != 2000 || err != nil {
			t.Errorf("node %d: outer query read %d rows, %d not its own, err %v", i+1, n, bad, err)
		}
		outer.Close()
		tx.Rollback()
	}
}

// A forwarded script whose first statement committed and whose later one
// meets a leader change is not sent again: nothing runs twice.
func TestForward_ScriptNotSentTwice(t *testing.T) {
	c := newCluster(t, 3)
	l := c.waitLeader()
	f := c.follower(l)
	db := c.db(f, "sc.db")
	mustExec(t, db, `CREATE TABLE log (v TEXT)`)
	slow := `SELECT count(*) FROM (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c LIMIT 3000000) SELECT x FROM c)`
	done := make(chan error, 1)
	go func() {
		_, err := db.Exec(`INSERT INTO log VALUES ('a'); ` + slow + `; INSERT INTO log VALUES ('b')`)
		done <- err
	}()
	time.Sleep(100 * time.Millisecond)
	c.transferLeadership(3 - l - f)
	err := <-done
	t.Logf("script: %v", err)
	c.check("sc.db", `SELECT rowid FROM log`, nil)
	rows, err := c.db(f, "sc.db").Query(`SELECT v, count(*) FROM log GROUP BY v`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	for rows.Next() {
		var v string
		var n int
		rows.Scan(&v, &n)
		if n != 1 {
			t.Errorf("row %q present %d times after one script", v, n)
		}
	}
}

// INSERT … RETURNING through a follower whose session to the leader breaks
// after the first batch: the leader ends (and so commits) the statement
// with the session, and the client says the outcome is unknown.
func TestForward_ReturningWhenSessionBreaks(t *testing.T) {
	c := newCluster(t, 3)
	l := c.waitLeader()
	f := c.follower(l)
	db := c.db(f, "ret.db")
	mustExec(t, db, `CREATE TABLE t (id INTEGER PRIMARY KEY)`)
	rows, err := db.Query(`INSERT INTO t SELECT value FROM generate_series(1, 3000) RETURNING id`)
	if err != nil {
		t.Fatal(err)
	}
	rows.Next()
	c.net.cut(l, f)
	time.Sleep(300 * time.Millisecond)
	c.net.heal()
	for rows.Next() {
	}
	err = rows.Err()
	rows.Close()
	if !errors.Is(err, ErrLeadershipLost) {
		t.Errorf("rows of a write whose session broke: %v, want an outcome-unknown error (ErrLeadershipLost)", err)
	}
	o := newOutcome()
	o.record(1, err)
	c.check("ret.db", `SELECT id FROM t WHERE id = 1`, o)
}

// Closing a node whose forwarded statement is looking for a leader returns
// at once, and the statement fails with ErrClosed.
func TestForward_CloseStopsLeaderSearch(t *testing.T) {
	c := newCluster(t, 3)
	l := c.waitLeader()
	f := c.follower(l)
	db := c.db(f, "cw.db")
	mustExec(t, db, `CREATE TABLE t (id INTEGER PRIMARY KEY)`)
	c.stop(l)
	c.stop(3 - l - f) // no quorum: no leader will be found
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_, err := db.ExecContext(ctx, `INSERT INTO t VALUES (1)`)
		done <- err
	}()
	time.Sleep(time.Second)
	start := time.Now()
	c.stop(f)
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Close took %v", d)
	}
	if err := <-done; !errors.Is(err, ErrClosed) {
		t.Errorf("statement of a closed node: %v, want ErrClosed", err)
	}
}

// A forwarded read that must wait (linearizable, WithAfter) for a table
// this node does not have yet waits for it rather than failing with "no
// such table".
func TestRead_WaitsForNewTable(t *testing.T) {
	c := newCluster(t, 3)
	l := c.waitLeader()
	lag := 3 - l - c.follower(l)
	c.db(lag, "nt2.db")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for _, level := range []string{"linearizable", "after"} {
		tbl := "t_" + level
		c.net.cutRaft(l, lag)
		var index uint64
		if _, err := c.db(l, "nt2.db").ExecContext(WithCommitIndex(ctx, &index), `CREATE TABLE `+tbl+` (id INTEGER PRIMARY KEY); INSERT INTO `+tbl+` VALUES (1)`); err != nil {
			t.Fatal(err)
		}
		go func() { time.Sleep(300 * time.Millisecond); c.net.heal() }()
		rctx := WithReadLevel(ctx, ReadLinearizable)
		if level == "after" {
			rctx = WithAfter(ctx, index)
		}
		var n int
		if err := c.db(lag, "nt2.db").QueryRowContext(rctx, `SELECT count(*) FROM `+tbl).Scan(&n); err != nil || n != 1 {
			t.Errorf("%s read of a table created just before on the leader: %d, %v", level, n, err)
		}
	}
}

// A client that announces a huge first frame, or sends nothing after the
// magic byte, holds no memory and is cut after the hello timeout; random
// frames after a hello break nothing.
func TestClientProtocol_BadInput(t *testing.T) {
	c := newCluster(t, 1)
	addr := c.nodes[0].Address()
	mustExec(t, c.db(0, "fz.db"), `CREATE TABLE t (id INTEGER PRIMARY KEY, v)`)
	var ms runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms)
	before := ms.HeapAlloc
	var conns []net.Conn
	for range 8 {
		nc, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, nc)
		h := []byte{wire.Magic, wire.Version, 0, 0, 0, 0, byte(wire.Hello), 1}
		binary.BigEndian.PutUint32(h[2:], 256<<20)
		nc.Write(h)
	}
	time.Sleep(500 * time.Millisecond)
	runtime.ReadMemStats(&ms)
	if grew := int64(ms.HeapAlloc) - int64(before); grew > 64<<20 {
		t.Errorf("8 connections announcing 256 MiB frames grew the heap by %d MiB", grew>>20)
	}
	for _, nc := range conns {
		nc.Close()
	}

	rng := rand.New(rand.NewSource(1))
	sqls := []string{"SELECT * FROM t", "INSERT INTO t(v) VALUES (?)", "BEGIN", "COMMIT", "SELECT ?", "INSERT INTO t(v) VALUES (1) RETURNING id", "ROLLBACK"}
	for range 100 {
		nc, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		br := bufio.NewReader(nc)
		nc.Write([]byte{wire.Magic, wire.Version})
		var w wire.Writer
		w.Reset(wire.Hello)
		w.String("fz.db")
		w.WriteTo(nc)
		for range 30 {
			typ := wire.Type(1 + rng.Intn(10))
			w.Reset(typ)
			if rng.Intn(3) == 0 {
				b := make([]byte, rng.Intn(20))
				rng.Read(b)
				w.Append(b)
			} else {
				w.Uint(uint64(rng.Intn(4)))
				w.Uint(uint64(rng.Intn(3)))
				if typ == wire.Exec || typ == wire.Query {
					w.String(sqls[rng.Intn(len(sqls))])
					w.Uint(uint64(rng.Intn(3)))
				}
			}
			if _, err := w.WriteTo(nc); err != nil {
				break
			}
			if typ == wire.Interrupt {
				continue
			}
			nc.SetReadDeadline(time.Now().Add(2 * time.Second))
			if _, err := br.ReadByte(); err != nil {
				break
			}
			br.Discard(br.Buffered())
		}
		nc.Close()
	}
	if _, err := c.db(0, "fz.db").Exec(`INSERT INTO t(v) VALUES (1)`); err != nil {
		t.Fatalf("the node after bad clients: %v", err)
	}

	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	nc.Write([]byte{wire.Magic})
	nc.SetReadDeadline(time.Now().Add(30 * time.Second))
	start := time.Now()
	if _, err := nc.Read(make([]byte, 1)); err == nil || time.Since(start) > 20*time.Second {
		t.Errorf("a client that sends nothing after the magic byte: %v after %v, want the node to cut it", err, time.Since(start))
	}
}

// A remote client's commits are recorded by WithCommitIndex.
func TestRemote_CommitIndex(t *testing.T) {
	c := newCluster(t, 3)
	l := c.waitLeader()
	db, err := sql.Open(driver.Name, fmt.Sprintf("dqlite://%s/ci.db", c.nodes[c.follower(l)].Address()))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	ctx := context.Background()
	mustExec(t, db, `CREATE TABLE t (id INTEGER PRIMARY KEY)`)
	var index uint64
	if _, err := db.ExecContext(WithCommitIndex(ctx, &index), `INSERT INTO t VALUES (1)`); err != nil {
		t.Fatal(err)
	}
	first := index
	tx, err := db.BeginTx(WithCommitIndex(ctx, &index), nil)
	if err != nil {
		t.Fatal(err)
	}
	tx.Exec(`INSERT INTO t VALUES (2)`)
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	if first == 0 || index <= first || index > c.nodes[l].AppliedIndex() {
		t.Errorf("commit indexes %d then %d (leader applied %d)", first, index, c.nodes[l].AppliedIndex())
	}
	if _, err := sql.Open(driver.Name, "dqlite://127.0.0.1:1/x.db?forward=false"); err == nil {
		t.Error("a remote data source name took forward=false")
	}
}

// Connection settings made on a follower hold for the writes it forwards.
func TestForward_ConnectionSettings(t *testing.T) {
	c := newCluster(t, 3)
	l := c.waitLeader()
	ctx := context.Background()
	mustExec(t, c.db(l, "fk.db"), `CREATE TABLE p (id INTEGER PRIMARY KEY); CREATE TABLE ch (id INTEGER PRIMARY KEY, p INTEGER REFERENCES p(id))`)
	for _, i := range []int{l, c.follower(l)} {
		conn := mustConn(t, c.db(i, "fk.db"))
		if _, err := conn.ExecContext(ctx, `PRAGMA foreign_keys=ON`); err != nil {
			t.Fatal(err)
		}
		if _, err := conn.ExecContext(ctx, `INSERT INTO ch VALUES (?, 999)`, i+10); err == nil {
			t.Errorf("node %d: foreign_keys=ON, and an insert with a dangling reference succeeded", i+1)
		}
		if _, err := conn.ExecContext(ctx, `PRAGMA foreign_keys=OFF`); err != nil {
			t.Fatal(err)
		}
		if _, err := conn.ExecContext(ctx, `INSERT INTO ch VALUES (?, 999)`, i+20); err != nil {
			t.Errorf("node %d: foreign_keys=OFF, and an insert with a dangling reference failed: %v", i+1, err)
		}
	}
}

// A client of a node cannot make it write or open files of its machine:
// VACUUM INTO and ATTACH are refused on the leader's connections for
// clients, from a remote client and from a follower's forwarded script.
func TestClientProtocol_NoFilesOnTheLeader(t *testing.T) {
	c := newCluster(t, 3)
	l := c.waitLeader()
	mustExec(t, c.db(l, "vi.db"), `CREATE TABLE t (id INTEGER PRIMARY KEY)`)
	db, err := sql.Open(driver.Name, fmt.Sprintf("dqlite://%s/vi.db", c.nodes[l].Address()))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	dir := t.TempDir()
	for _, q := range []string{`VACUUM INTO '%s'`, `ATTACH '%s' AS x`} {
		p := filepath.Join(dir, fmt.Sprint(len(q), ".db"))
		if _, err := db.Exec(fmt.Sprintf(q, p)); !errors.Is(err, ErrRefused) {
			t.Errorf("%s from a remote client: %v, want ErrRefused", q, err)
		}
		if _, err := os.Stat(p); err == nil {
			t.Errorf("%s from a remote client wrote %s", q, p)
		}
	}
	p := filepath.Join(dir, "forwarded.db")
	_, err = c.db(c.follower(l), "vi.db").Exec(fmt.Sprintf(`INSERT INTO t VALUES (1); VACUUM INTO '%s'`, p))
	if err == nil {
		t.Error("a follower's script ending in VACUUM INTO succeeded")
	}
	if _, err := os.Stat(p); err == nil {
		t.Errorf("a follower's forwarded VACUUM INTO wrote %s on the leader's machine", p)
	}
}
