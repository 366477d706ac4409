package dqlite

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// The Raft log is bounded by bytes: with transactions of 1 MiB, a node
// snapshots long before SnapshotThreshold entries and keeps fewer than
// TrailingLogs entries after it, so the log's file stays near MaxLogBytes.
func TestCluster_LogBoundedByBytes(t *testing.T) {
	const maxLog = 4 << 20
	// BoltDB, which maps its whole file: the bound matters most there.
	c := newCluster(t, 3, func(cfg *Config) { cfg.MaxLogBytes, cfg.LogStore = maxLog, "bolt" })
	l := c.waitLeader()
	db := c.db(l, "test.db")
	mustExec(t, db, `CREATE TABLE t (id INTEGER PRIMARY KEY, b BLOB)`)
	for range 24 { // 24 MiB of transactions: six times the bound
		mustExec(t, db, `INSERT INTO t (b) VALUES (randomblob(1 << 20))`)
	}
	logBytes := func(i int) (first, last uint64, bytes int64) {
		first, _ = c.nodes[i].store.FirstIndex()
		last, _ = c.nodes[i].store.LastIndex()
		for idx := first; idx <= last; idx++ {
			var e raft.Log
			if err := c.nodes[i].store.GetLog(idx, &e); err == nil {
				bytes += int64(len(e.Data))
			}
		}
		return first, last, bytes
	}
	// Without the bound, every entry would stay (8,192 entries before a
	// snapshot, 10,240 after it).
	waitFor(t, 30*time.Second, "every node to keep at most MaxLogBytes of entries", func() bool {
		for i := range c.nodes {
			if _, _, bytes := logBytes(i); bytes > maxLog {
				return false
			}
		}
		return true
	})
	for i := range c.nodes {
		first, last, bytes := logBytes(i)
		st, err := os.Stat(filepath.Join(c.cfgs[i].Dir, "raft.db"))
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("node %d: log %d-%d, %d bytes of entries, raft.db %d bytes", i+1, first, last, bytes, st.Size())
	}
	c.check("test.db", `SELECT id FROM t`, nil)
}
