package dqlite

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// changeString is a Change in a compact form: "t+1,2 w~* l+5" (table,
// operations +insert ~update -delete, keys, * for partial).
func changeString(c Change) string {
	var parts []string
	for _, t := range c.Tables {
		s := t.Table
		if t.Inserted {
			s += "+"
		}
		if t.Updated {
			s += "~"
		}
		if t.Deleted {
			s += "-"
		}
		var ks []string
		for _, k := range t.Keys {
			ks = append(ks, fmt.Sprint(k))
		}
		s += strings.Join(ks, ",")
		if t.Partial {
			s += "*"
		}
		parts = append(parts, s)
	}
	if c.Unknown {
		parts = append(parts, "?")
	}
	return strings.Join(parts, " ")
}

func nextChange(t *testing.T, s *Subscription) Change {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := s.Next(ctx)
	if err != nil {
		t.Fatalf("Next: %v", err)
	}
	return c
}

// TestSubscribe: subscriptions on a follower and on the leader see every
// committed transaction of their database in commit order, with the
// tables and rowids it changed, and nothing of rolled-back transactions,
// temporary tables or other databases; a subscription resumes after an
// index across a restart; one behind the log gets ErrCompacted; Close
// ends a waiting Next.
func TestSubscribe(t *testing.T) {
	ctx := context.Background()
	c := newCluster(t, 3, func(cfg *Config) { cfg.TrailingLogs = 5 })
	l := c.waitLeader()
	f := c.follower(l)
	db := c.db(f, "c.db") // writes are forwarded to the leader
	fs, err := c.nodes[f].Subscribe("c.db", 0, true)
	if err != nil {
		t.Fatal(err)
	}
	ls, err := c.nodes[l].Subscribe("c.db", 0, false)
	if err != nil {
		t.Fatal(err)
	}
	o := newOutcome()
	mustExec(t, db, `CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT);
		CREATE TABLE w (k TEXT PRIMARY KEY, v) WITHOUT ROWID;
		CREATE TABLE log (id INTEGER PRIMARY KEY AUTOINCREMENT, what);
		CREATE TRIGGER t_del AFTER DELETE ON t BEGIN INSERT INTO log (what) VALUES ('deleted ' || old.id); END`)
	mustExec(t, db, `INSERT INTO t (id, v) VALUES (1, 'a'), (2, 'b'), (3, 'c')`)
	tx, err := db.Begin()
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{`UPDATE t SET id = 10 WHERE id = 1`, `INSERT INTO w VALUES ('x', 1)`, `DELETE FROM t WHERE id = 2`} {
		if _, err := tx.Exec(q); err != nil {
			t.Fatal(err)
		}
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	tx, _ = db.Begin()
	tx.Exec(`INSERT INTO t (id) VALUES (99)`)
	tx.Rollback()
	conn := mustConn(t, c.db(l, "c.db"))
	if _, err := conn.ExecContext(ctx, `CREATE TEMP TABLE tmp (x); INSERT INTO tmp VALUES (1)`); err != nil {
		t.Fatal(err)
	}
	conn.Close()
	mustExec(t, c.db(l, "other.db"), `CREATE TABLE o (x); INSERT INTO o VALUES (1)`)
	mustExec(t, db, `UPDATE t SET v = 'z' WHERE id = 3`)
	// REPLACE deletes the row that conflicts on v (no update hook sees
	// it); DELETE without WHERE (SQLite's truncate optimization skips the
	// update hook).
	mustExec(t, db, `CREATE UNIQUE INDEX t_v ON t (v)`)
	mustExec(t, db, `INSERT OR REPLACE INTO t (id, v) VALUES (20, 'z')`)
	mustExec(t, db, `DELETE FROM log`)
	// A schema change that did not happen is not listed; one that the
	// hooks cannot see is said to be unknown.
	mustExec(t, db, `CREATE TABLE IF NOT EXISTS t (x)`)
	mustExec(t, db, `INSERT INTO t (id) VALUES (30)`)
	tx, err = db.Begin()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(`CREATE TABLE IF NOT EXISTS w (k)`); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	mustExec(t, db, `PRAGMA user_version = 7`)
	tx, err = db.Begin()
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{`INSERT INTO t (id) VALUES (31)`, `PRAGMA user_version = 8`} {
		if _, err := tx.Exec(q); err != nil {
			t.Fatal(err)
		}
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}

	want := []string{
		// The script's statements commit one by one; the schema's
		// changes have no keys.
		"sqlite_schema~*", "sqlite_schema~*", "sqlite_schema~*", "sqlite_schema~*",
		"t+1,2,3",
		// The UPDATE moved row 1 to 10; the trigger wrote log (and
		// sqlite_sequence, an internal table SQLite's hooks skip); w is
		// WITHOUT ROWID.
		"t~-1,2,10 w+* log+1",
		"t~3",
		"sqlite_schema~*",
		"t+-3,20",
		"log-1",
		"t+30",
		"?",
		"t+31 ?",
	}
	var got []string
	var idx []uint64
	for range want {
		ch := nextChange(t, fs)
		if ch.Database != "c.db" {
			t.Errorf("change of %s", ch.Database)
		}
		got = append(got, changeString(ch))
		idx = append(idx, ch.Index)
	}
	if strings.Join(got, " | ") != strings.Join(want, " | ") {
		t.Errorf("changes on the follower:\n got %s\nwant %s", strings.Join(got, " | "), strings.Join(want, " | "))
	}
	if !slices.IsSorted(idx) || idx[0] == 0 {
		t.Errorf("indexes %v", idx)
	}
	for i := range want {
		ch := nextChange(t, ls)
		if ch.Index != idx[i] || changeString(ch) != strings.Map(func(r rune) rune {
			if r == ',' || r >= '0' && r <= '9' {
				return -1 // no keys: this subscription did not ask for them
			}
			return r
		}, want[i]) {
			t.Errorf("leader's change %d: %+v, want index %d and no keys", i, ch, idx[i])
		}
	}

	// Concurrent writers: the leader batches transactions of several
	// connections into one entry, delivered as one change with their
	// Transactions count; every one is delivered, in commit order.
	var wg sync.WaitGroup
	var mu sync.Mutex
	committed := map[int64]uint64{} // row → its commit index
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := range 25 {
				id := int64(1000 + w*100 + k)
				var index uint64
				_, err := c.db(l, "c.db").ExecContext(WithCommitIndex(ctx, &index), `INSERT INTO t (id) VALUES (?)`, id)
				o.record(id, err)
				if err == nil {
					mu.Lock()
					committed[id] = index
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	seen := map[int64]uint64{}
	batched := 0
	last := idx[len(idx)-1]
	for len(seen) < len(committed) {
		ch := nextChange(t, fs)
		if ch.Index < last {
			t.Fatalf("change at index %d after one at %d", ch.Index, last)
		}
		last = ch.Index
		if len(ch.Tables) != 1 || ch.Tables[0].Table != "t" || len(ch.Tables[0].Keys) != ch.Transactions || ch.Unknown {
			t.Fatalf("change %+v", ch)
		}
		if ch.Transactions > 1 {
			batched++
		}
		for _, k := range ch.Tables[0].Keys {
			seen[k] = ch.Index
		}
	}
	t.Logf("%d entries carried several transactions", batched)
	for id, index := range committed {
		if seen[id] != index {
			t.Errorf("row %d committed at %d, delivered at %d", id, index, seen[id])
		}
	}

	// Resume after a restart: after the index of the fifth change.
	c.stop(f)
	c.restart(f)
	rs, err := c.nodes[f].Subscribe("c.db", idx[4], true)
	if err != nil {
		t.Fatal(err)
	}
	if ch := nextChange(t, rs); ch.Index != idx[5] || changeString(ch) != want[5] {
		t.Errorf("resumed after %d: %+v, want %s at %d", idx[4], ch, want[5], idx[5])
	}

	// Close ends a Next that waits; so does closing the node.
	done := make(chan error, 1)
	go func() {
		for {
			if _, err := rs.Next(ctx); err != nil {
				done <- err
				return
			}
		}
	}()
	rs.Close()
	if err := <-done; !errors.Is(err, ErrClosed) {
		t.Errorf("Next after Close: %v", err)
	}
	ls, err = c.nodes[l].Subscribe("c.db", c.nodes[l].Status().AppliedIndex, false)
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		_, err := ls.Next(ctx)
		done <- err
	}()

	// Behind a compacted log: ErrCompacted.
	g := c.follower(f)
	if g == l {
		g = c.follower(g)
	}
	if err := c.nodes[g].raft.Snapshot().Error(); err != nil {
		t.Fatal(err)
	}
	old, _ := c.nodes[g].Subscribe("c.db", 0, false)
	if _, err := old.Next(ctx); !errors.Is(err, ErrCompacted) {
		t.Errorf("a subscription behind the log: %v", err)
	}
	c.stop(l)
	if err := <-done; !errors.Is(err, ErrClosed) {
		t.Errorf("Next on a closed node: %v", err)
	}
	c.restart(l)

	c.check("c.db", `SELECT id FROM t WHERE id >= 1000`, o)
}

// TestSubscribe_AfterInstall: on a node that received a snapshot (it
// joined after the leader compacted its log), the changes before the
// snapshot are gone (ErrCompacted), later ones come. The BoltDB log store
// deletes compacted entries at once (raft-wal keeps its last segment).
func TestSubscribe_AfterInstall(t *testing.T) {
	ctx := context.Background()
	c := newCluster(t, 1, func(cfg *Config) { cfg.TrailingLogs = 5; cfg.LogStore = "bolt" })
	o := newOutcome()
	mustExec(t, c.db(0, "c.db"), `CREATE TABLE t (id INTEGER PRIMARY KEY)`)
	for id := range int64(20) {
		mustExec(t, c.db(0, "c.db"), `INSERT INTO t (id) VALUES (?)`, id)
		o.record(id, nil)
	}
	l := 0
	if err := c.nodes[l].raft.Snapshot().Error(); err != nil {
		t.Fatal(err)
	}
	j := c.addNode()
	if err := c.nodes[l].AddVoter(ctx, c.nodes[j].ID(), c.nodes[j].Address()); err != nil {
		t.Fatal(err)
	}
	if err := c.nodes[j].WaitApplied(ctx, c.nodes[l].AppliedIndex()); err != nil {
		t.Fatal(err)
	}
	if s, _ := c.nodes[j].Subscribe("c.db", 0, false); s != nil {
		if _, err := s.Next(ctx); !errors.Is(err, ErrCompacted) {
			t.Errorf("on a node that installed a snapshot: %v", err)
		}
	}
	js, err := c.nodes[j].Subscribe("c.db", c.nodes[j].Status().AppliedIndex, true)
	if err != nil {
		t.Fatal(err)
	}
	mustExec(t, c.db(l, "c.db"), `INSERT INTO t (id) VALUES (5000)`)
	o.record(5000, nil)
	if ch := nextChange(t, js); changeString(ch) != "t+5000" {
		t.Errorf("on the new node: %+v", ch)
	}
	if c.nodes[j].fsm.Stats().Restored == 0 {
		t.Errorf("the new node installed no snapshot")
	}
	c.check("c.db", `SELECT id FROM t`, o)
}

// TestSubscribe_StaleHistory: a leader cut off from the others logs
// writes that never commit; the others go on and compact their log, so
// that, healed, it installs a snapshot, and Raft keeps the trailing
// entries of its old log. After a restart too, a subscription on it must
// never deliver those: it gets the committed changes or ErrCompacted.
func TestSubscribe_StaleHistory(t *testing.T) {
	ctx := context.Background()
	c := newCluster(t, 3, func(cfg *Config) { cfg.TrailingLogs = 5; cfg.LogStore = "bolt" })
	l := c.waitLeader()
	o := newOutcome()
	mustExec(t, c.db(l, "c.db"), `CREATE TABLE t (id INTEGER PRIMARY KEY)`)
	for i := range int64(5) {
		mustExec(t, c.db(l, "c.db"), `INSERT INTO t VALUES (?)`, i)
		o.record(i, nil)
	}
	for i := range c.nodes {
		if err := c.nodes[i].WaitApplied(ctx, c.nodes[l].AppliedIndex()); err != nil {
			t.Fatal(err)
		}
	}
	before := c.nodes[l].raft.LastIndex()
	c.net.isolate(l)
	for k := range int64(3) {
		_, err := c.dbNoFwd(l, "c.db").Exec(`INSERT INTO t VALUES (?)`, 666000+k)
		if err == nil {
			t.Fatalf("a write on the isolated leader committed")
		}
		o.record(666000+k, err)
	}
	var nl int
	waitFor(t, 20*time.Second, "a new leader", func() bool {
		for i, n := range c.nodes {
			if i != l && n.IsLeader() {
				nl = i
				return true
			}
		}
		return false
	})
	for i := range int64(20) {
		mustExec(t, c.db(nl, "c.db"), `INSERT INTO t VALUES (?)`, 1000+i)
		o.record(1000+i, nil)
	}
	if err := c.nodes[nl].raft.Snapshot().Error(); err != nil {
		t.Fatal(err)
	}
	c.net.heal()
	waitFor(t, 30*time.Second, "the old leader to install a snapshot", func() bool {
		return c.nodes[l].fsm.Stats().Restored > 0 && c.nodes[l].AppliedIndex() >= c.nodes[nl].AppliedIndex()
	})
	for restart := range 2 {
		if restart == 1 {
			c.stop(l)
			c.restart(l)
		}
		s, err := c.nodes[l].Subscribe("c.db", before, true)
		if err != nil {
			t.Fatal(err)
		}
		for range 3 {
			cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			ch, err := s.Next(cctx)
			cancel()
			if errors.Is(err, ErrCompacted) {
				break
			}
			if err != nil {
				t.Fatalf("restarted %v: %v", restart == 1, err)
			}
			for _, tc := range ch.Tables {
				for _, k := range tc.Keys {
					if k >= 666000 {
						t.Errorf("restarted %v: delivered row %d, which never committed", restart == 1, k)
					}
				}
			}
		}
	}
	c.check("c.db", `SELECT id FROM t`, o)
}
