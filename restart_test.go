package dqlite

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

// restartScenario writes 200 rows, has follower f take a snapshot, writes
// 50 more, stops f, writes 20 while it is down, then lets prepare touch
// f's data directory and restarts it. It returns f and the stat of its
// database file before the restart.
func restartScenario(t *testing.T, c *cluster, prepare func(dir string)) (f int, before os.FileInfo) {
	t.Helper()
	l := c.waitLeader()
	db := c.db(l, "test.db")
	mustExec(t, db, `CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)`)
	insert := func(n int) {
		for range n {
			mustExec(t, db, `INSERT INTO t (v) VALUES (randomblob(300))`)
		}
	}
	insert(200)
	f = (l + 1) % 3
	caughtUp := func() bool { return c.nodes[f].raft.AppliedIndex() >= c.nodes[l].raft.AppliedIndex() }
	waitFor(t, 10*time.Second, "the follower to apply", caughtUp)
	if err := c.nodes[f].raft.Snapshot().Error(); err != nil {
		t.Fatal(err)
	}
	insert(50)
	waitFor(t, 10*time.Second, "the follower to apply", caughtUp)
	path := filepath.Join(c.cfgs[f].Dir, "test.db")
	c.stop(f)
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	insert(20)
	if prepare != nil {
		prepare(c.cfgs[f].Dir)
	}
	c.restart(f)
	// Raft's applied index counts entries handed to the FSM, not those it
	// finished: wait for the FSM itself.
	waitFor(t, 30*time.Second, "the restarted follower to apply the 70 transactions after the snapshot", func() bool {
		st := c.nodes[f].fsm.Stats()
		return st.Skipped+st.Appended >= 70
	})
	return f, st
}

// A node whose files hold an applied index restarts from them: it keeps
// its database file, skips the entries its files hold, applies only those
// it missed, and restores no snapshot.
func TestCluster_RestartFromLocalFiles(t *testing.T) {
	c := newCluster(t, 3)
	f, before := restartScenario(t, c, nil)
	after, err := os.Stat(filepath.Join(c.cfgs[f].Dir, "test.db"))
	if err != nil {
		t.Fatal(err)
	}
	if !os.SameFile(before, after) {
		t.Error("the database file was replaced at restart")
	}
	st := c.nodes[f].fsm.Stats()
	if st.Restored != 0 || st.Appended != 20 || st.Skipped != 50 {
		t.Errorf("after restart: %+v; want 0 restored, 20 appended (missed while down), 50 skipped (after the snapshot)", st)
	}
	c.check("test.db", `SELECT id FROM t`, nil)
}

// Files that cannot be trusted are rebuilt from the snapshot and the log:
// after a machine restart the node did not stop cleanly before, and when
// the applied log is damaged.
func TestCluster_RestartRebuildsUntrustedFiles(t *testing.T) {
	for name, prepare := range map[string]func(dir string){
		"machine restarted": func(dir string) {
			if err := os.WriteFile(filepath.Join(dir, "applied", "boot"), []byte("0another-boot"), 0o644); err != nil {
				t.Fatal(err)
			}
		},
		"applied log damaged": func(dir string) {
			path := filepath.Join(dir, "applied", "test.db.rec")
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			b[3] ^= 0xff // the header record's checksum fails
			if err := os.WriteFile(path, b, 0o644); err != nil {
				t.Fatal(err)
			}
		},
		"applied log missing": func(dir string) {
			if err := os.Remove(filepath.Join(dir, "applied", "test.db.rec")); err != nil {
				t.Fatal(err)
			}
		},
	} {
		t.Run(name, func(t *testing.T) {
			c := newCluster(t, 3)
			f, _ := restartScenario(t, c, prepare)
			st := c.nodes[f].fsm.Stats()
			if st.Restored != 1 || st.Skipped != 0 || st.Appended != 70 {
				t.Errorf("after restart: %+v; want 1 restored, 70 appended (after the snapshot), 0 skipped", st)
			}
			c.check("test.db", `SELECT id FROM t`, nil)
		})
	}
}
