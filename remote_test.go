package dqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/godqlite/dqlite/driver"
)

// TestRemote_Client uses the cluster from a *sql.DB that is no member of
// it: writes, transactions, prepared statements and reads all run on the
// leader, which it finds from a follower's address and follows when
// leadership moves.
func TestRemote_Client(t *testing.T) {
	c := newCluster(t, 3)
	l := c.waitLeader()
	f := c.follower(l)
	dsn := fmt.Sprintf("dqlite://%s,%s/rc.db", c.nodes[f].Address(), c.nodes[l].Address())
	db, err := sql.Open(driver.Name, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	ctx := context.Background()
	if _, err := db.Exec(`CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT, at DATETIME)`); err != nil {
		t.Fatalf("create through a remote client: %v", err)
	}
	o := newOutcome()
	ins, err := db.Prepare(`INSERT INTO t (id, v, at) VALUES (?, ?, ?)`)
	if err != nil {
		t.Fatal(err)
	}
	defer ins.Close()
	now := time.Now().UTC().Truncate(time.Millisecond)
	for id := int64(1); id <= 5; id++ {
		_, err := ins.Exec(id, fmt.Sprint("v", id), now)
		o.record(id, err)
		if err != nil {
			t.Fatal(err)
		}
	}
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	var n int
	tx.Exec(`INSERT INTO t (id, v) VALUES (6, 'tx')`)
	if err := tx.QueryRow(`SELECT count(*) FROM t`).Scan(&n); err != nil || n != 6 {
		t.Fatalf("count in a remote transaction: %d, %v", n, err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	o.record(6, nil)
	var at time.Time
	if err := db.QueryRow(`SELECT at FROM t WHERE id = 3`).Scan(&at); err != nil || !at.Equal(now) {
		t.Fatalf("time read back: %v, %v (want %v)", at, err, now)
	}

	// Leadership moves: the client follows it.
	other := c.follower(l)
	c.transferLeadership(other)
	for id := int64(7); id <= 9; id++ {
		_, err := db.Exec(`INSERT INTO t (id, v) VALUES (?, 'after')`, id)
		o.record(id, err)
		if err != nil {
			t.Fatalf("insert after the leader changed: %v", err)
		}
	}
	// Linearizable reads, by data source name and by context.
	lin, err := sql.Open(driver.Name, dsn+"?level=linearizable")
	if err != nil {
		t.Fatal(err)
	}
	defer lin.Close()
	if err := lin.QueryRow(`SELECT count(*) FROM t`).Scan(&n); err != nil || n != 9 {
		t.Fatalf("linearizable count: %d, %v", n, err)
	}
	if err := db.QueryRowContext(WithReadLevel(ctx, ReadLinearizable), `SELECT count(*) FROM t`).Scan(&n); err != nil || n != 9 {
		t.Fatalf("linearizable count by context: %d, %v", n, err)
	}
	c.check("rc.db", `SELECT id FROM t`, o)
}

// TestRemote_BadInput: data source names that cannot work fail clearly, and
// a cluster that cannot be reached fails within the context's deadline.
func TestRemote_BadInput(t *testing.T) {
	for _, dsn := range []string{"dqlite:///x.db", "dqlite://nohost/x.db", "dqlite://127.0.0.1:1", "dqlite://127.0.0.1:1/x.db?level=strong"} {
		db, err := sql.Open(driver.Name, dsn)
		if err == nil {
			err = db.Ping()
			db.Close()
		}
		if err == nil || !strings.Contains(err.Error(), "data source name") {
			t.Errorf("%q: %v, want an error about the data source name", dsn, err)
		}
	}
	db, err := sql.Open(driver.Name, "dqlite://127.0.0.1:1/x.db")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err = db.ExecContext(ctx, `CREATE TABLE t (x)`)
	if !errors.Is(err, ErrNoLeader) || time.Since(start) > 5*time.Second {
		t.Errorf("unreachable cluster: %v after %v, want ErrNoLeader within the deadline", err, time.Since(start))
	}
}

// execInTx runs one statement in a transaction of its own and commits it.
func execInTx(db *sql.DB, query string, args ...any) error {
	tx, err := db.Begin()
	if err != nil {
		return err
	}
	if _, err := tx.Exec(query, args...); err != nil {
		tx.Rollback()
		return err
	}
	return tx.Commit()
}

// TestForward_LeaderKilled writes through every node while the leader is
// stopped and later restarted: every acknowledged write is everywhere,
// nothing reported failed is anywhere.
func TestForward_LeaderKilled(t *testing.T) {
	c := newCluster(t, 3)
	l := c.waitLeader()
	mustExec(t, c.db(l, "kill.db"), `CREATE TABLE t (id INTEGER PRIMARY KEY, node INTEGER)`)
	dbs := make([]*sql.DB, 3)
	for i := range dbs {
		dbs[i] = c.db(i, "kill.db")
	}
	o := newOutcome()
	var next atomic.Int64
	var stop atomic.Bool
	var wg sync.WaitGroup
	acked := make([]atomic.Int64, 3)
	for w := range 6 {
		i := w % 3
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				id := next.Add(1)
				var err error
				if id%2 == 0 {
					_, err = dbs[i].Exec(`INSERT INTO t VALUES (?, ?)`, id, i)
				} else {
					err = execInTx(dbs[i], `INSERT INTO t VALUES (?, ?)`, id, i)
				}
				o.record(id, err)
				if err == nil {
					acked[i].Add(1)
				} else {
					time.Sleep(5 * time.Millisecond)
				}
			}
		}()
	}
	waitFor(t, 20*time.Second, "writes through every node", func() bool {
		return acked[0].Load() > 20 && acked[1].Load() > 20 && acked[2].Load() > 20
	})
	c.stop(l)
	survivor := c.follower(l)
	base := acked[survivor].Load()
	waitFor(t, 30*time.Second, "writes through a survivor after the leader stopped", func() bool {
		return acked[survivor].Load() > base+20
	})
	stop.Store(true)
	wg.Wait()
	c.restart(l)
	o.mu.Lock()
	t.Logf("acknowledged %d, failed %d, ambiguous %d", len(o.acked), len(o.failed), len(o.ambiguous))
	o.mu.Unlock()
	c.check("kill.db", `SELECT id FROM t`, o)
}
