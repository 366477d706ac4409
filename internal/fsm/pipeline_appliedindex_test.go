package fsm

import (
	"testing"
	"time"
)

// An acknowledged write must be at or below AppliedIndex, which the leader
// hands out as its read index (node.go readIndex). claim ends the
// commit's wait inside Apply, before Apply returns: the applied index must
// move first. The applied log's write (held here by recMu) keeps Apply
// from returning meanwhile.
func TestPipeline_AckBeforeAppliedIndex(t *testing.T) {
	p := newPair(t)
	d, c := p.open(t, "test.db", 4096)
	exec(t, c, d, `CREATE TABLE t (v)`)
	d.recMu.Lock() // the applied log's write is slow
	unlocked := false
	defer func() {
		if !unlocked {
			d.recMu.Unlock()
		}
	}()
	cuts := d.Cuts()
	if err := c.Exec(`INSERT INTO t VALUES (1)`); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- d.Await(7, cuts) }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
		idx, applied := p.index, p.leader.AppliedIndex()
		d.recMu.Unlock()
		unlocked = true
		if applied < idx {
			t.Fatalf("write acknowledged at index %d while the leader's AppliedIndex (its read index) is %d", idx, applied)
		}
	case <-time.After(2 * time.Second):
		d.recMu.Unlock()
		unlocked = true
		<-done
		t.Log("Await waited for Apply to finish (fixed)")
	}
}
