package dqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// leaderWithOneRow starts a 3-node cluster with test hooks and row 1 in
// table t; armed is for a hook that must fire once.
func leaderWithOneRow(t *testing.T) (c *cluster, l int, db *sql.DB, h *hooks, armed *atomic.Bool) {
	h = &hooks{}
	c = newCluster(t, 3, func(cfg *Config) { cfg.hooks = h })
	l = c.waitLeader()
	db = c.db(l, "test.db")
	mustExec(t, db, `CREATE TABLE t (id INTEGER PRIMARY KEY)`)
	mustExec(t, db, `INSERT INTO t VALUES (1)`)
	armed = new(atomic.Bool)
	armed.Store(true)
	return c, l, db, h, armed
}

// Concurrent writers on the leader share Raft rounds: while one batch
// replicates, the next transactions run and queue, and go out together.
func TestPipeline_ConcurrentWritersShareRounds(t *testing.T) {
	c := newCluster(t, 3)
	l := c.waitLeader()
	db := c.db(l, "test.db")
	mustExec(t, db, `CREATE TABLE t (id INTEGER PRIMARY KEY, w INT)`)
	db.SetMaxOpenConns(9)
	before := c.nodes[l].fsm.Stats()
	o := newOutcome()
	var next atomic.Int64
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 40 {
				id := next.Add(1)
				tx, err := db.Begin()
				if err == nil {
					if _, err = tx.Exec(`INSERT INTO t VALUES (?, ?)`, id, w); err == nil {
						err = tx.Commit()
					} else {
						tx.Rollback()
					}
				}
				o.record(id, err)
			}
		}()
	}
	wg.Wait()
	if len(o.acked) != 320 {
		t.Fatalf("%d of 320 transactions committed (failed: %v)", len(o.acked), o.failed)
	}
	after := c.nodes[l].fsm.Stats()
	entries, txs := after.Claimed-before.Claimed, after.Txs-before.Txs
	t.Logf("320 transactions in %d Raft entries", entries)
	if txs != 320 {
		t.Fatalf("the leader's entries carried %d transactions, want 320", txs)
	}
	if entries >= txs {
		t.Fatalf("every transaction had a Raft entry of its own (%d entries): commits are not pipelined", entries)
	}
	c.check("test.db", `SELECT id FROM t`, o)
}

// A transaction the leader has written but Raft has not committed is seen
// by no reader of the leader (autocommit or read-only transaction): they
// wait until it commits, or see the state without it once it is cut.
func TestPipeline_NothingVisibleBeforeCommit(t *testing.T) {
	for _, heal := range []bool{true, false} {
		t.Run(fmt.Sprintf("commits=%v", heal), func(t *testing.T) {
			// The isolated leader keeps its lease while the readers start.
			c := newCluster(t, 3, func(cfg *Config) {
				cfg.HeartbeatTimeout, cfg.ElectionTimeout, cfg.LeaderLeaseTimeout = 2*time.Second, 2*time.Second, time.Second
				cfg.ApplyTimeout = 3 * time.Second
			})
			l := c.waitLeader()
			db := c.db(l, "test.db")
			mustExec(t, db, `CREATE TABLE t (id INTEGER PRIMARY KEY)`)
			mustExec(t, db, `INSERT INTO t VALUES (1)`)
			d := c.nodes[l].fsm.Database("test.db")
			c.net.isolate(l)
			o := newOutcome()
			o.record(1, nil)
			commit := make(chan error, 1)
			go func() {
				_, err := db.Exec(`INSERT INTO t VALUES (2)`)
				commit <- err
			}()
			waitFor(t, 10*time.Second, "the insert to be queued on the leader", func() bool { return d.Queued() > 0 })
			var claimed atomic.Bool
			type read struct {
				n          int
				err        error
				afterClaim bool
			}
			reads := make(chan read, 3)
			var started sync.WaitGroup
			started.Add(3)
			// A write transaction sees the queued insert (it is built on
			// it) but must not commit unless that insert does, even when it
			// writes nothing itself.
			go func() {
				started.Done()
				var n int
				tx, err := db.BeginTx(context.Background(), nil)
				if err == nil {
					err = tx.QueryRow(`SELECT count(*) FROM t`).Scan(&n)
					if err == nil {
						err = tx.Commit()
					} else {
						tx.Rollback()
					}
				}
				if err != nil && n == 2 && !heal {
					err = nil // it saw the insert, which failed: its commit must fail
					n = 1
				}
				reads <- read{n, err, claimed.Load()}
			}()
			go func() {
				started.Done()
				var n int
				err := db.QueryRow(`SELECT count(*) FROM t`).Scan(&n)
				reads <- read{n, err, claimed.Load()}
			}()
			go func() {
				started.Done()
				var n int
				tx, err := db.BeginTx(context.Background(), &sqlTxOptions{ReadOnly: true})
				if err == nil {
					err = tx.QueryRow(`SELECT count(*) FROM t`).Scan(&n)
					tx.Rollback()
				}
				reads <- read{n, err, claimed.Load()}
			}()
			if heal {
				// A reader that does not wait for the commit returns well
				// within this; one that waits cannot return before the heal.
				started.Wait()
				time.Sleep(200 * time.Millisecond)
				claimed.Store(true) // before the heal: the claim can only follow it
				c.net.heal()
			}
			err := <-commit
			o.record(2, err)
			for range 3 {
				r := <-reads
				if r.err != nil {
					t.Fatalf("read on the leader: %v", r.err)
				}
				switch {
				case r.n == 2 && err != nil:
					t.Fatalf("a reader saw a transaction whose commit failed (%v)", err)
				case r.n == 2 && !r.afterClaim:
					t.Fatal("a reader saw the transaction before Raft committed it")
				case r.n != 1 && r.n != 2:
					t.Fatalf("read %d rows", r.n)
				}
			}
			if heal && err != nil {
				t.Fatalf("commit once healed: %v", err)
			}
			if !heal && !errors.Is(err, ErrNoQuorum) && !errors.Is(err, ErrLeadershipLost) {
				t.Fatalf("commit without a quorum: %v, want ErrNoQuorum or ErrLeadershipLost", err)
			}
			c.net.heal()
			c.check("test.db", `SELECT id FROM t`, o)
		})
	}
}
