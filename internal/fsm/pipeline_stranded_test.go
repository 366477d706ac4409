package fsm

import (
	"testing"
	"time"

	"github.com/ncruces/go-sqlite3"
)

// Once the database is marked failed with transactions queued and no batch
// in flight, their commits fail at once: the proposer proposes nothing for
// a failed database. Found in review: they waited until Close (which then
// deadlocked on the connections waiting in Await). Here claim's
// applied-log record fails after A's batch was claimed, with B queued.
func TestPipeline_FailedStrandsQueue(t *testing.T) {
	p := newPair(t)
	d, c := p.open(t, "test.db", 4096)
	exec(t, c, d, `CREATE TABLE t (v)`)
	release := make(chan struct{})
	blocked := make(chan struct{})
	orig := p.leader.opts.Propose
	first := true
	p.leader.opts.Propose = func(cmd []byte) error {
		if first {
			first = false
			close(blocked)
			<-release
		}
		return orig(cmd)
	}
	// A: in flight, held in Propose.
	if err := c.Exec(`INSERT INTO t VALUES ('A')`); err != nil {
		t.Fatal(err)
	}
	d.Settle(7)
	<-blocked
	// B: queued behind A, on connection 8.
	c8, err := sqlite3.Open(d.URI(8))
	if err != nil {
		t.Fatal(err)
	}
	defer c8.Close()
	c8.Exec(`PRAGMA wal_autocheckpoint=0`)
	if err := c8.Exec(`INSERT INTO t VALUES ('B')`); err != nil {
		t.Fatal(err)
	}
	awaitB := make(chan error, 1)
	go func() { awaitB <- d.Await(8, d.Cuts()) }()
	// The applied log refuses the record of A's batch (a non-disk error:
	// here its file is closed under it): claim marks the database failed.
	d.rec.f.Close()
	close(release)
	if err := d.Await(7, d.Cuts()); err != nil {
		t.Logf("A: %v", err)
	}
	select {
	case err := <-awaitB:
		t.Logf("B resolved: %v", err)
	case <-time.After(5 * time.Second):
		t.Fatalf("B's Await still waits 5 s after A was claimed (queued=%d, failed=%v)", d.Queued(), d.Failed())
	}
}
