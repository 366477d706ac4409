package dqlite

import (
	"context"
	"errors"
	"strconv"
	"testing"
	"time"
)

// TestRead_LinearizableOnDeposedLeader: a leader cut off from the others
// goes on believing it leads until its lease runs out, while the others
// elect a new leader and commit through it. Node 1 has a long lease and
// the others short timeouts, so that the moment lasts seconds. A local
// read of the old leader returns the old value (the control); a
// linearizable read there never does: it fails, or waits and returns the
// new one.
func TestRead_LinearizableOnDeposedLeader(t *testing.T) {
	c := newCluster(t, 3, func(cfg *Config) {
		if cfg.ID == 1 {
			cfg.HeartbeatTimeout, cfg.ElectionTimeout, cfg.LeaderLeaseTimeout = 5*time.Second, 5*time.Second, 5*time.Second
		} else {
			cfg.HeartbeatTimeout, cfg.ElectionTimeout, cfg.LeaderLeaseTimeout = 300*time.Millisecond, 300*time.Millisecond, 150*time.Millisecond
		}
	})
	c.transferLeadership(0)
	old := c.db(0, "lin.db")
	mustExec(t, old, `CREATE TABLE r (k INTEGER PRIMARY KEY, v INTEGER); INSERT INTO r VALUES (1, 1)`)
	waitFor(t, 10*time.Second, "every node to have the first value", func() bool {
		return c.nodes[1].AppliedIndex() >= c.nodes[0].AppliedIndex() && c.nodes[2].AppliedIndex() >= c.nodes[0].AppliedIndex()
	})
	c.net.isolate(0)
	var next int
	waitFor(t, 20*time.Second, "a new leader among the others", func() bool {
		for _, i := range []int{1, 2} {
			if c.nodes[i].IsLeader() {
				next = i
				return true
			}
		}
		return false
	})
	mustExec(t, c.db(next, "lin.db"), `UPDATE r SET v = 2 WHERE k = 1`)
	if !c.nodes[0].IsLeader() {
		t.Fatal("the old leader already knows it was deposed: the test needs it to believe it leads")
	}
	ctx := context.Background()
	var v int
	if err := old.QueryRow(`SELECT v FROM r WHERE k = 1`).Scan(&v); err != nil || v != 1 {
		t.Fatalf("local read of the deposed leader: %d, %v (the control: it should be the old value, 1)", v, err)
	}
	for range 5 {
		rctx, cancel := context.WithTimeout(WithReadLevel(ctx, ReadLinearizable), time.Second)
		err := old.QueryRowContext(rctx, `SELECT v FROM r WHERE k = 1`).Scan(&v)
		cancel()
		if err == nil && v != 2 {
			t.Fatalf("linearizable read of the deposed leader returned %d after 2 was acknowledged", v)
		}
		if err != nil && !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, ErrNotLeader) && !errors.Is(err, ErrNoLeader) {
			t.Errorf("linearizable read of the deposed leader: %v", err)
		}
	}
	// The same by the *sql.DB's default level.
	lin, err := c.nodes[0].OpenWith(ctx, "lin.db", DBOptions{ReadLevel: ReadLinearizable})
	if err != nil {
		t.Fatal(err)
	}
	defer lin.Close()
	rctx, cancel := context.WithTimeout(ctx, time.Second)
	err = lin.QueryRowContext(rctx, `SELECT v FROM r WHERE k = 1`).Scan(&v)
	cancel()
	if err == nil && v != 2 {
		t.Fatalf("linearizable read (by default level) of the deposed leader returned %d", v)
	}
	c.net.heal()
	// Once it hears of the new leader (the new leader's replication to it
	// backs off while it was cut off), its linearizable reads see 2.
	waitFor(t, 60*time.Second, "a linearizable read of the old leader once healed", func() bool {
		err := old.QueryRowContext(WithReadLevel(ctx, ReadLinearizable), `SELECT v FROM r WHERE k = 1`).Scan(&v)
		if err == nil && v != 2 {
			t.Fatalf("linearizable read of the old leader once healed returned %d", v)
		}
		return err == nil
	})
	c.check("lin.db", `SELECT k FROM r`, nil)
}

// TestRead_LinearizableOnFollowers: a linearizable read on any
// node sees a write acknowledged on another just before.
func TestRead_LinearizableOnFollowers(t *testing.T) {
	c := newCluster(t, 3)
	l := c.waitLeader()
	mustExec(t, c.db(l, "lf.db"), `CREATE TABLE r (k INTEGER PRIMARY KEY, v INTEGER); INSERT INTO r VALUES (1, 0)`)
	ctx := WithReadLevel(context.Background(), ReadLinearizable)
	for v := 1; v <= 50; v++ {
		writer := v % 3
		mustExec(t, c.db(writer, "lf.db"), `UPDATE r SET v = `+strconv.Itoa(v)+` WHERE k = 1`)
		reader := (v + 1) % 3
		var got int
		if err := c.db(reader, "lf.db").QueryRowContext(ctx, `SELECT v FROM r WHERE k = 1`).Scan(&got); err != nil || got != v {
			t.Fatalf("linearizable read on node %d after a write through node %d: %d, %v; want %d", reader+1, writer+1, got, err, v)
		}
	}
	c.check("lf.db", `SELECT k FROM r`, nil)
}
