package dqlite

import (
	"testing"

	"github.com/hashicorp/raft"
)

// Over raft-wal, Raft must install snapshots as it does over BoltDB (keep
// the entries after the snapshot), because on a monotonic store
// hashicorp/raft deletes every entry yet goes on believing it has them: a
// node that the fault-injection suite added under load panicked with "log
// not found" at its next commit (hashicorp/raft#697). So the store must not
// claim to be monotonic, and must take the one gap Raft makes: the first
// append after a snapshot beyond the end of the log.
func TestLogStore_WALTakesGaps(t *testing.T) {
	cfg := Config{Dir: t.TempDir(), LogStore: "wal"}
	store, err := openLogStore(cfg.withDefaults(), newHclog(cfg.withDefaults().Logger))
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	if m, ok := store.(raft.MonotonicLogStore); ok && m.IsMonotonic() {
		t.Fatal("the raft-wal store claims to be monotonic: Raft would empty it on a snapshot install")
	}
	entries := func(from, to uint64) []*raft.Log {
		var logs []*raft.Log
		for i := from; i <= to; i++ {
			logs = append(logs, &raft.Log{Index: i, Term: 1, Type: raft.LogCommand, Data: []byte{byte(i)}})
		}
		return logs
	}
	if err := store.StoreLogs(entries(1, 10)); err != nil {
		t.Fatal(err)
	}
	// A snapshot at 5 arrives: Raft deletes up to it and keeps the rest.
	if err := store.DeleteRange(1, 5); err != nil {
		t.Fatal(err)
	}
	for i := uint64(6); i <= 10; i++ {
		var l raft.Log
		if err := store.GetLog(i, &l); err != nil {
			t.Fatalf("entry %d after the snapshot: %v", i, err)
		}
	}
	// A snapshot at 20 arrives: the log is behind it, and the next append
	// starts after it.
	if err := store.StoreLogs(entries(21, 25)); err != nil {
		t.Fatalf("append after a snapshot beyond the log: %v", err)
	}
	first, _ := store.FirstIndex()
	last, _ := store.LastIndex()
	if first != 21 || last != 25 {
		t.Fatalf("log holds %d..%d, want 21..25", first, last)
	}
	if err := store.StoreLog(&raft.Log{Index: 26, Term: 1}); err != nil {
		t.Fatal(err)
	}
}
