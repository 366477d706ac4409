package fsm

import (
	"bytes"
	"fmt"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"github.com/ncruces/go-sqlite3"

	"github.com/godqlite/dqlite/internal/command"
)

// pair is a leader FSM whose proposals are applied to itself and then to a
// follower FSM, in log order: Raft without the network.
type pair struct {
	leader, follower *FSM
	index            uint64
}

func newPair(t *testing.T) *pair {
	t.Helper()
	p := &pair{}
	mk := func(id uint64) *FSM {
		opts := Options{NodeID: id, MaxTxSize: 64 << 20, CheckpointFrames: 1000,
			Logger: slog.New(slog.DiscardHandler)}
		if id == 1 {
			opts.Propose = p.propose
		}
		f, err := New(t.TempDir(), opts)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		return f
	}
	p.leader, p.follower = mk(1), mk(2)
	return p
}

func (p *pair) propose(cmd []byte) error {
	p.index++
	l := &raft.Log{Index: p.index, Type: raft.LogCommand, Data: cmd}
	// The follower first: the leader's claim ends the commit's wait.
	for _, f := range []*FSM{p.follower, p.leader} {
		if r := f.Apply(l); r != nil {
			return r.(error)
		}
	}
	return nil
}

func (p *pair) open(t *testing.T, name string, pageSize uint32) (*DB, *sqlite3.Conn) {
	t.Helper()
	if err := p.propose(command.EncodeOpen(command.Open{Database: name, PageSize: pageSize})); err != nil {
		t.Fatal(err)
	}
	d := p.leader.Database(name)
	c, err := sqlite3.Open(d.URI(7))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if err := c.Exec(`PRAGMA wal_autocheckpoint=0; PRAGMA synchronous=NORMAL`); err != nil {
		t.Fatal(err)
	}
	// The leader's checkpoints take the write lock for a moment.
	if err := c.BusyTimeout(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	return d, c
}

func exec(t *testing.T, c *sqlite3.Conn, d *DB, sql string) {
	t.Helper()
	cuts := d.Cuts()
	err := c.Exec(sql)
	if err == nil {
		err = d.Await(7, cuts)
	} else {
		d.Settle(7)
		if cause := d.TakeError(7); cause != nil {
			err = fmt.Errorf("%w (%w)", err, cause)
		}
	}
	if err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

func dump(t *testing.T, f *FSM, name string) string {
	t.Helper()
	c, err := sqlite3.Open(f.Database(name).URI(99))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var out bytes.Buffer
	s, _, err := c.Prepare(`SELECT name FROM sqlite_schema WHERE type='table' ORDER BY name`)
	if err != nil {
		t.Fatal(err)
	}
	var tables []string
	for s.Step() {
		tables = append(tables, s.ColumnText(0))
	}
	s.Close()
	for _, tb := range tables {
		s, _, err := c.Prepare(fmt.Sprintf(`SELECT * FROM %q ORDER BY rowid`, tb))
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&out, "%s:", tb)
		for s.Step() {
			for i := range s.ColumnCount() {
				fmt.Fprintf(&out, " %x", s.ColumnRawText(i))
			}
			out.WriteString(";")
		}
		s.Close()
	}
	var ok string
	s, _, _ = c.Prepare(`PRAGMA integrity_check`)
	if s.Step() {
		ok = s.ColumnText(0)
	}
	s.Close()
	if ok != "ok" {
		t.Fatalf("integrity_check: %s", ok)
	}
	return out.String()
}

func checkpointAndCompare(t *testing.T, p *pair, name string) {
	t.Helper()
	for _, f := range []*FSM{p.leader, p.follower} {
		d := f.Database(name)
		d.applyMu.Lock()
		_, _, err := d.apply.WALCheckpoint("main", sqlite3.CHECKPOINT_TRUNCATE)
		d.applyMu.Unlock()
		if err != nil {
			t.Fatal(err)
		}
	}
	a, _ := os.ReadFile(p.leader.Database(name).Path())
	b, _ := os.ReadFile(p.follower.Database(name).Path())
	if !bytes.Equal(a, b) {
		t.Fatalf("database files differ after checkpoint (%d and %d bytes)", len(a), len(b))
	}
}

func TestFollowerPath_MatchesLeader(t *testing.T) {
	for _, ps := range []uint32{1024, 4096, 65536} {
		t.Run(fmt.Sprint(ps), func(t *testing.T) {
			p := newPair(t)
			d, c := p.open(t, "test.db", ps)
			exec(t, c, d, `CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB, r INT, ts TEXT)`)
			for i := range 200 {
				exec(t, c, d, fmt.Sprintf(`INSERT INTO t (v, r, ts) VALUES (randomblob(%d), random(), datetime('now'))`, 10+i*7))
			}
			// A transaction that spills the page cache, with a savepoint rolled back.
			exec(t, c, d, `PRAGMA cache_size=2; BEGIN; INSERT INTO t (v) SELECT randomblob(3000) FROM t;
				SAVEPOINT s; UPDATE t SET r = r + 1; INSERT INTO t (v) SELECT randomblob(500) FROM t; ROLLBACK TO s; RELEASE s;
				UPDATE t SET r = 0 WHERE id % 3 = 0; COMMIT; PRAGMA cache_size=-2000`)
			exec(t, c, d, `DELETE FROM t WHERE id > 50`)
			exec(t, c, d, `VACUUM`)
			exec(t, c, d, `ALTER TABLE t ADD COLUMN z DEFAULT 5`)
			want := dump(t, p.leader, "test.db")
			if got := dump(t, p.follower, "test.db"); got != want {
				t.Fatalf("follower differs from leader")
			}
			checkpointAndCompare(t, p, "test.db")
			// Writes after the WAL was truncated restart it on both sides.
			exec(t, c, d, `INSERT INTO t (v) VALUES (x'01')`)
			if got := dump(t, p.follower, "test.db"); got != dump(t, p.leader, "test.db") {
				t.Fatal("follower differs after WAL restart")
			}
			checkpointAndCompare(t, p, "test.db")
		})
	}
}

func TestSnapshot_RestoreOnLiveFollower(t *testing.T) {
	p := newPair(t)
	d, c := p.open(t, "test.db", 4096)
	exec(t, c, d, `CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)`)
	for range 50 {
		exec(t, c, d, `INSERT INTO t (v) VALUES (randomblob(1000))`)
	}
	store, err := OpenStore(t.TempDir(), slog.New(slog.DiscardHandler), 0)
	if err != nil {
		t.Fatal(err)
	}
	persist(t, p.leader, store, 60)
	// A fresh node restores it; so does the follower, which already has data.
	other, err := New(t.TempDir(), Options{NodeID: 3, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	for _, f := range []*FSM{other, p.follower} {
		restoreLatest(t, store, f)
		if got, want := dump(t, f, "test.db"), dump(t, p.leader, "test.db"); got != want {
			t.Fatal("restored database differs")
		}
	}
}

// persist takes a snapshot of f into store, as Raft does at index.
func persist(t *testing.T, f *FSM, store *Store, index uint64) Meta {
	t.Helper()
	snap, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	defer snap.Release()
	sink, err := store.Create(1, index, 1, raft.Configuration{}, 1, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := snap.Persist(sink); err != nil {
		t.Fatal(err)
	}
	m, _ := store.Latest()
	return m
}

// restoreLatest restores f from the store's latest snapshot, as Raft does.
func restoreLatest(t *testing.T, store *Store, f *FSM) {
	t.Helper()
	m, ok := store.Latest()
	if !ok {
		t.Fatal("no snapshot")
	}
	_, rc, err := store.Open(m.Raft.ID)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Restore(rc); err != nil {
		t.Fatal(err)
	}
}

func TestFollowerPath_RestartsCheckpointedWAL(t *testing.T) {
	p := newPair(t)
	d, c := p.open(t, "test.db", 4096)
	exec(t, c, d, `CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)`)
	for range 50 {
		exec(t, c, d, `INSERT INTO t (v) VALUES (randomblob(500))`)
	}
	fd := p.follower.Database("test.db")
	passive := func() {
		fd.applyMu.Lock()
		defer fd.applyMu.Unlock()
		if _, _, err := fd.apply.WALCheckpoint("main", sqlite3.CHECKPOINT_PASSIVE); err != nil {
			t.Fatal(err)
		}
	}
	// A reader holding a snapshot in the WAL keeps it from restarting, and keeps its snapshot.
	r, err := sqlite3.Open(fd.URI(50))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	count := func() (n int64) {
		if err := queryInt(r, `SELECT count(*) FROM t`, &n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	if err := r.Exec(`BEGIN`); err != nil {
		t.Fatal(err)
	}
	if n := count(); n != 50 {
		t.Fatalf("reader sees %d rows", n)
	}
	passive()
	h, back, _ := fd.WALState()
	if back != h.MaxFrame || h.MaxFrame < 50 {
		t.Fatalf("passive checkpoint left %d of %d frames", back, h.MaxFrame)
	}
	exec(t, c, d, `INSERT INTO t (v) VALUES (x'01')`)
	if h2, _, _ := fd.WALState(); h2.MaxFrame <= h.MaxFrame {
		t.Fatalf("WAL restarted under a reader: %d frames, was %d", h2.MaxFrame, h.MaxFrame)
	}
	if n := count(); n != 50 {
		t.Fatalf("reader's snapshot changed: %d rows", n)
	}
	r.Exec(`COMMIT`)

	// Without readers, the next transaction restarts the fully checkpointed WAL.
	passive()
	exec(t, c, d, `INSERT INTO t (v) VALUES (x'02')`)
	h3, _, _ := fd.WALState()
	if h3.MaxFrame > 5 {
		t.Fatalf("WAL did not restart: %d frames", h3.MaxFrame)
	}
	if n := count(); n != 52 {
		t.Fatalf("after restart a new reader sees %d rows, want 52", n)
	}
	if got, want := dump(t, p.follower, "test.db"), dump(t, p.leader, "test.db"); got != want {
		t.Fatal("follower differs after the WAL restart")
	}
	checkpointAndCompare(t, p, "test.db")
}
