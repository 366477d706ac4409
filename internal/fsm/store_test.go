package fsm

import (
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"github.com/hashicorp/raft"
	"github.com/ncruces/go-sqlite3"

	"github.com/godqlite/dqlite/internal/command"
	"github.com/godqlite/dqlite/wal"
)

// Raft's takeSnapshot calls FSMSnapshot.Release without Persist when the
// snapshot is refused (a configuration change not yet applied, shutdown,
// Create failing): the pages changed since the previous snapshot must go
// into the next one. (Found by review: they were lost.)
func TestSnapshot_ReleaseWithoutPersistKeepsChangedPages(t *testing.T) {
	p := newPair(t)
	d, c := p.open(t, "test.db", 4096)
	exec(t, c, d, `CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)`)
	for range 50 {
		exec(t, c, d, `INSERT INTO t (v) VALUES (hex(randomblob(200)))`)
	}
	store, err := OpenStore(t.TempDir(), slog.New(slog.DiscardHandler), 0)
	if err != nil {
		t.Fatal(err)
	}
	persist(t, p.leader, store, p.index)
	exec(t, c, d, `UPDATE t SET v = 'changed'`)
	// Raft: FSM.Snapshot, then "cannot take snapshot now, wait until the
	// configuration entry ... has been applied" -> deferred Release only.
	snap, err := p.leader.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	snap.Release()
	exec(t, c, d, `INSERT INTO t (v) VALUES ('x')`)
	persist(t, p.leader, store, p.index)

	fresh, err := New(t.TempDir(), Options{NodeID: 3, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer fresh.Close()
	restoreLatest(t, store, fresh)
	if got, want := dump(t, fresh, "test.db"), dump(t, p.leader, "test.db"); got != want {
		t.Fatalf("database restored from the store differs from the leader's:\n got %.120s\nwant %.120s", got, want)
	}
}

// A delta Persist in flight while the same node installs a full snapshot
// from the leader (raft allows both at once: takeSnapshot runs on the
// snapshot goroutine, installSnapshot on the main one) is refused: stored,
// the older delta would become the latest snapshot and fold its old pages
// over the newer base. (Found by review.)
func TestStore_DeltaOlderThanInstallRefused(t *testing.T) {
	p := newPair(t)
	d, c := p.open(t, "test.db", 4096)
	exec(t, c, d, `CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)`)
	for range 50 {
		exec(t, c, d, `INSERT INTO t (v) VALUES (hex(randomblob(200)))`)
	}
	fstore, err := OpenStore(t.TempDir(), slog.New(slog.DiscardHandler), 0)
	if err != nil {
		t.Fatal(err)
	}
	persist(t, p.follower, fstore, p.index) // follower's own first snapshot
	exec(t, c, d, `UPDATE t SET v = 'B'`)
	idx2 := p.index
	snap, err := p.follower.Snapshot() // follower's takeSnapshot starts
	if err != nil {
		t.Fatal(err)
	}
	defer snap.Release()
	sinkD, _ := fstore.Create(1, idx2, 1, raft.Configuration{}, 1, nil)

	exec(t, c, d, `UPDATE t SET v = 'C'`)
	for range 50 {
		exec(t, c, d, `INSERT INTO t (v) VALUES ('C')`)
	}
	idx3 := p.index
	lstore, _ := OpenStore(t.TempDir(), slog.New(slog.DiscardHandler), 0)
	m := persist(t, p.leader, lstore, idx3)
	// installSnapshot on the follower: receive into its store, then Restore.
	meta, rc, err := lstore.Open(m.Raft.ID)
	if err != nil {
		t.Fatal(err)
	}
	sinkF, _ := fstore.Create(1, idx3, 1, raft.Configuration{}, 1, nil)
	if n, err := io.Copy(sinkF, rc); err != nil || n != meta.Size {
		t.Fatalf("copy: %d of %d: %v", n, meta.Size, err)
	}
	rc.Close()
	if err := sinkF.Close(); err != nil {
		t.Fatal(err)
	}
	restoreLatest(t, fstore, p.follower)
	// Now the follower's takeSnapshot finishes.
	if err := snap.Persist(sinkD); !errors.Is(err, errStale) {
		t.Fatalf("a delta older than the installed snapshot: %v, want errStale", err)
	}
	latest, _ := fstore.Latest()
	t.Logf("latest snapshot index %d (installed %d, delta %d)", latest.Raft.Index, idx3, idx2)
	fresh, _ := New(t.TempDir(), Options{NodeID: 3, Logger: slog.New(slog.DiscardHandler)})
	defer fresh.Close()
	restoreLatest(t, fstore, fresh)
	got, want := dump(t, fresh, "test.db"), dump(t, p.leader, "test.db")
	if latest.Raft.Index != idx3 || got != want {
		t.Fatalf("store went back to index %d and serves a database that is neither state (equal to leader: %v)", latest.Raft.Index, got == want)
	}
}

// After a restart from trusted files at index A, Raft replays from the
// store's snapshot index S. A snapshot taken during the replay (Raft's
// lastApplied L with S < L < A) would pin the files' state at A with only
// the changed pages of (S, L]: it is refused until the replay passes A.
// (Found by review.)
func TestSnapshot_RefusedWhileReplayingAfterRestart(t *testing.T) {
	var logs []*raft.Log
	var leader, follower *FSM
	idx := uint64(0)
	propose := func(cmd []byte) error {
		idx++
		l := &raft.Log{Index: idx, Type: raft.LogCommand, Data: cmd}
		logs = append(logs, l)
		// The follower first: the leader's claim ends the commit's wait.
		for _, f := range []*FSM{follower, leader} {
			if r := f.Apply(l); r != nil {
				return r.(error)
			}
		}
		return nil
	}
	opts := func(id uint64) Options {
		return Options{NodeID: id, MaxTxSize: 64 << 20, Logger: slog.New(slog.DiscardHandler), Propose: propose}
	}
	var err error
	leader, _ = New(t.TempDir(), opts(1))
	defer leader.Close()
	fdir := t.TempDir()
	follower, _ = New(fdir, opts(2))
	if err := propose(encodeOpen("test.db", 4096)); err != nil {
		t.Fatal(err)
	}
	d := leader.Database("test.db")
	c, _ := sqliteOpen(d.URI(7))
	defer c.Close()
	c.Exec(`PRAGMA wal_autocheckpoint=0`)
	exec(t, c, d, `CREATE TABLE a (id INTEGER PRIMARY KEY, v TEXT)`)
	exec(t, c, d, `CREATE TABLE b (id INTEGER PRIMARY KEY, v TEXT)`)
	for range 30 {
		exec(t, c, d, `INSERT INTO a (v) VALUES (hex(randomblob(300)))`)
		exec(t, c, d, `INSERT INTO b (v) VALUES (hex(randomblob(300)))`)
	}
	store, err := OpenStore(t.TempDir(), slog.New(slog.DiscardHandler), 0)
	if err != nil {
		t.Fatal(err)
	}
	S := idx
	persist(t, follower, store, S)
	exec(t, c, d, `UPDATE a SET v = 'L'`) // (S, L]
	L := idx
	exec(t, c, d, `UPDATE b SET v = 'A'`) // (L, A]
	A := idx
	// Follower restarts from its files (clean stop: trusted).
	follower.Close()
	follower, err = New(fdir, opts(2))
	if err != nil || follower.Untrusted() != "" {
		t.Fatal(err, follower.Untrusted())
	}
	defer follower.Close()
	if got := follower.Applied()["test.db"]; got != A {
		t.Fatalf("applied %d, want %d", got, A)
	}
	// Raft replays S+1..L, then takes a snapshot at L (lastApplied).
	for _, l := range logs[S:L] {
		follower.Apply(l)
	}
	if _, err := follower.Snapshot(); !errors.Is(err, errCatchingUp) {
		t.Fatalf("snapshot during the replay: %v, want errCatchingUp", err)
	}
	for _, l := range logs[L:A] {
		follower.Apply(l)
	}
	m := persist(t, follower, store, A)
	fresh, _ := New(t.TempDir(), Options{NodeID: 3, Logger: slog.New(slog.DiscardHandler)})
	defer fresh.Close()
	restoreLatest(t, store, fresh)
	got, want := dump(t, fresh, "test.db"), dump(t, follower, "test.db")
	if got != want {
		t.Fatalf("snapshot labelled database index %d does not hold the state at %d", m.DBs[0].Index, A)
	}
}

func encodeOpen(name string, ps uint32) []byte {
	return command.EncodeOpen(command.Open{Database: name, PageSize: ps})
}

func sqliteOpen(uri string) (*sqlite3.Conn, error) { return sqlite3.Open(uri) }

// A snapshot directory this store did not write (an earlier version's
// snapshots) is refused, never removed.
func TestStore_RefusesForeignSnapshots(t *testing.T) {
	dir := t.TempDir()
	old := filepath.Join(dir, "2-5-1733400000000")
	if err := os.MkdirAll(old, 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenStore(dir, slog.New(slog.DiscardHandler), 0); err == nil {
		t.Fatal("opened a directory holding snapshots of another format")
	}
	if _, err := os.Stat(old); err != nil {
		t.Fatalf("the foreign snapshot is gone: %v", err)
	}
}

// A snapshot stores the pages changed since the previous one, not the
// database: after one row changes in a database of hundreds of pages, the
// next snapshot holds a few pages, and the store still serves the whole
// database as of that snapshot.
func TestSnapshot_StoresOnlyChangedPages(t *testing.T) {
	p := newPair(t)
	d, c := p.open(t, "test.db", 4096)
	exec(t, c, d, `CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)`)
	for range 20 {
		exec(t, c, d, `INSERT INTO t (v) SELECT randomblob(1000) FROM generate_series(1, 50)`)
	}
	store, err := OpenStore(t.TempDir(), slog.New(slog.DiscardHandler), 0)
	if err != nil {
		t.Fatal(err)
	}
	take := func() int64 {
		snap, err := p.follower.Snapshot()
		if err != nil {
			t.Fatal(err)
		}
		defer snap.Release()
		sink, err := store.Create(1, p.index, 1, raft.Configuration{}, 1, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := snap.Persist(sink); err != nil {
			t.Fatal(err)
		}
		return snap.(*snapshot).pages
	}
	first := take()
	exec(t, c, d, `UPDATE t SET v = x'01' WHERE id = 500`)
	second := take()
	total := dbPages(p.follower.Database("test.db"))
	t.Logf("database of %d pages: first snapshot stored %d pages, the next after one update %d", total, first, second)
	if first < int64(total) || second > 4 {
		t.Fatalf("snapshots stored %d then %d pages of a %d-page database; want all, then at most 4", first, second, total)
	}
	fresh, err := New(t.TempDir(), Options{NodeID: 3, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer fresh.Close()
	restoreLatest(t, store, fresh)
	if got, want := dump(t, fresh, "test.db"), dump(t, p.leader, "test.db"); got != want {
		t.Fatal("the store's database differs from the leader's")
	}
}

// dbPages returns a database's size in pages, as readers see it.
func dbPages(d *DB) uint32 {
	h, err := wal.NewIndex(d.shm).Header()
	if err == nil && h.DBSize > 0 {
		return h.DBSize
	}
	st, err := os.Stat(d.path)
	if err != nil {
		return 0
	}
	return uint32(st.Size() / int64(d.pageSize))
}
