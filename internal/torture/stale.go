package torture

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"
)

// StaleReads counts what RunStaleReads saw.
type StaleReads struct {
	Rounds            int // rounds in which a new leader committed while the old one was stopped
	Local, LocalStale int // local reads of the old leader, and those that returned the old value
	Lin, LinStale     int // linearizable reads of the old leader, and those that returned the old value
	BelievedLeader    int // rounds in which the old leader still said it led when resumed
}

func (s StaleReads) String() string {
	return fmt.Sprintf("%d rounds (old leader still believed it led in %d): local reads %d stale of %d, linearizable reads %d stale of %d",
		s.Rounds, s.BelievedLeader, s.LocalStale, s.Local, s.LinStale, s.Lin)
}

// RunStaleReads reads from a leader deposed without knowing it: in each
// round it writes value 1 to a register through the leader, stops the
// leader (SIGSTOP) until another node leads, writes value 2 through that
// node, sends reads reads of the register to the stopped old leader, half
// local and half linearizable, and resumes it. A linearizable read must
// never return 1: value 2 was acknowledged before it began.
func RunStaleReads(ctx context.Context, o Options, rounds, reads int) (StaleReads, error) {
	var res StaleReads
	if !supported {
		return res, errors.New("torture: not supported on this platform")
	}
	if err := os.MkdirAll(o.Dir, 0o755); err != nil {
		return res, err
	}
	logf, closeLog, err := runLog(o.Dir, o.Log)
	if err != nil {
		return res, err
	}
	defer closeLog()
	c, err := newCluster(o.Exe, o.Dir, 3, o.LogStore, logf)
	if err != nil {
		return res, err
	}
	defer c.close()
	if err := setup(ctx, c); err != nil {
		return res, err
	}
	call := func(i int, path string, q map[string]int64) (reply, outcome) {
		cctx, cancel := context.WithTimeout(ctx, opTimeout)
		defer cancel()
		return c.call(cctx, i, path, q)
	}
	for round := range rounds {
		key := int64(1000 + round)
		old := c.waitLeader(ctx, 20*time.Second)
		if old < 0 {
			return res, errors.New("torture: no leader")
		}
		if rep, o := call(old, "/reg/write", map[string]int64{"k": key, "v": 1}); o != ok {
			logf("round %d: first write on slot %d: %s", round, old, rep.Err)
			continue
		}
		if err := c.pause(old); err != nil {
			return res, err
		}
		next := -1
		for deadline := time.Now().Add(20 * time.Second); next < 0 && time.Now().Before(deadline); {
			next = c.leader(ctx)
			if next < 0 {
				sleep(ctx, 20*time.Millisecond)
			}
		}
		written := false
		if next >= 0 {
			_, o := call(next, "/reg/write", map[string]int64{"k": key, "v": 2})
			written = o == ok
		}
		if !written {
			if err := c.resume(old); err != nil {
				return res, err
			}
			logf("round %d: no write through a new leader while slot %d was stopped", round, old)
			continue
		}
		// The reads are sent while the old leader is stopped: they wait in
		// its sockets and run the moment it resumes, before it can hear
		// of the new term.
		type result struct {
			level int64
			rep   reply
			o     outcome
		}
		results := make(chan result, reads)
		var wg sync.WaitGroup
		for i := range reads {
			level := int64(2 * (i % 2))
			wg.Add(1)
			go func() {
				defer wg.Done()
				rep, o := call(old, "/reg/read", map[string]int64{"k": key, "level": level})
				results <- result{level, rep, o}
			}()
		}
		sleep(ctx, 200*time.Millisecond) // the requests reach the stopped process
		if err := c.resume(old); err != nil {
			return res, err
		}
		wg.Wait()
		close(results)
		res.Rounds++
		believed := false
		for r := range results {
			if r.o != ok {
				continue
			}
			believed = believed || r.rep.Leader == old
			stale := !r.rep.Found || r.rep.Value != 2
			if r.level == 0 {
				res.Local++
				if stale {
					res.LocalStale++
				}
			} else {
				res.Lin++
				if stale {
					res.LinStale++
					logf("round %d: a linearizable read on slot %d returned %d (found %v) after 2 was acknowledged", round, old, r.rep.Value, r.rep.Found)
				}
			}
		}
		if believed {
			res.BelievedLeader++
		}
		logf("round %d: old leader slot %d, new leader slot %d: %s", round, old, next, res)
	}
	return res, nil
}
