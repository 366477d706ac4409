package torture

import (
	"context"
	"errors"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/godqlite/dqlite/internal/crashpoint"
)

// RunCrash runs one crash test: three nodes under the set workload, one of
// which is killed (as SIGKILL does) at crash point point, then restarted;
// the cluster then heals and is checked as Run checks it (no acknowledged
// insert lost, every member's copy identical and intact).
//
// The victim is a follower, except for the leader's commit points; for the
// install points it is first killed and kept down until the leader has
// compacted its log past it (so that it must receive a snapshot), or, for
// install-create, loses its database files (so that it rebuilds them from
// its snapshot).
func RunCrash(ctx context.Context, o Options, point string) (Result, error) {
	pi := slices.Index(crashpoint.Points, point)
	if pi < 0 {
		return Result{}, fmt.Errorf("torture: no crash point %q", point)
	}
	if !supported {
		return Result{}, errors.New("torture: not supported on this platform")
	}
	if strings.HasPrefix(point, "install-") && point != "install-create" && o.LogStore == "" {
		// raft-wal drops its log a whole segment at a time: a victim
		// kept down would catch up from the log, not by a snapshot.
		o.LogStore = "bolt"
	}
	if err := os.MkdirAll(o.Dir, 0o755); err != nil {
		return Result{}, err
	}
	logf, closeLog, err := runLog(o.Dir, o.Log)
	if err != nil {
		return Result{}, err
	}
	defer closeLog()
	logf("crash test: point=%s logstore=%s dir=%s", point, o.LogStore, o.Dir)
	c, err := newCluster(o.Exe, o.Dir, 3, o.LogStore, logf)
	if err != nil {
		return Result{}, err
	}
	defer c.close()
	if err := setup(ctx, c); err != nil {
		return Result{}, err
	}

	w := newSet()
	if point == "apply-batch" {
		w.pad = 3 << 20
	}
	loadCtx, stopLoad := context.WithCancel(ctx)
	defer stopLoad()
	var wg sync.WaitGroup
	for i := range 2 {
		r := &router{c: c, rng: rand.New(rand.NewSource(int64(i))), leader: -1}
		wg.Add(1)
		go func() {
			defer wg.Done()
			w.client(loadCtx, r, i)
		}()
	}
	var problems []string
	// progress waits until n more inserts were acknowledged.
	progress := func(n int64, what string) bool {
		target := w.ok.Load() + n
		deadline := time.Now().Add(3 * time.Minute)
		for w.ok.Load() < target && time.Now().Before(deadline) && ctx.Err() == nil {
			sleep(ctx, 20*time.Millisecond)
		}
		if w.ok.Load() < target {
			problems = append(problems, fmt.Sprintf("%d inserts not acknowledged within 3 minutes %s", n, what))
			return false
		}
		return true
	}
	progress(50, "after setup")
	leader := c.waitLeader(ctx, 10*time.Second)
	if leader < 0 {
		return Result{}, errors.New("torture: no leader")
	}
	victim := (leader + 1) % 3
	if strings.HasPrefix(point, "commit-") {
		victim = leader
	}
	p := c.procs[victim]
	if strings.HasPrefix(point, "install-") {
		if point == "install-create" {
			// It must hold a snapshot to rebuild from.
			logPath := filepath.Join(o.Dir, fmt.Sprintf("node%d.log", victim))
			for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline) && ctx.Err() == nil; {
				if b, _ := os.ReadFile(logPath); strings.Contains(string(b), "snapshot complete") {
					break
				}
				sleep(ctx, 20*time.Millisecond)
			}
		}
		c.kill(victim, false)
		if point == "install-create" {
			if err := removeDatabases(p.dir); err != nil {
				return Result{}, err
			}
			logf("slot %d killed, its databases removed", victim)
		} else {
			logf("slot %d killed; waiting for the leader to compact its log past it", victim)
			progress(1500, "while the victim was down")
		}
		c.mu.Lock()
		p.crash = point + ":1"
		c.mu.Unlock()
		if err := c.start(victim, "", ""); err != nil {
			return Result{}, err
		}
	} else {
		after := int64(1)
		switch point {
		case "apply-written", "apply-recorded", "commit-written", "commit-recorded":
			after = 20
		}
		c.mu.Lock()
		p.crashing = true
		c.mu.Unlock()
		rep, o := c.call(ctx, victim, "/crash", map[string]int64{"point": int64(pi), "after": after})
		if o != ok {
			return Result{}, fmt.Errorf("torture: arm slot %d: %s", victim, rep.Err)
		}
	}
	logf("slot %d armed to die at %s", victim, point)
	deadline := time.Now().Add(3 * time.Minute)
	for ctx.Err() == nil && time.Now().Before(deadline) {
		c.mu.Lock()
		crashed := p.crashed
		c.mu.Unlock()
		if crashed > 0 {
			break
		}
		sleep(ctx, 20*time.Millisecond)
	}
	c.mu.Lock()
	crashed := p.crashed
	p.crashing = false
	c.mu.Unlock()
	if crashed == 0 {
		problems = append(problems, fmt.Sprintf("slot %d never reached crash point %s within 3 minutes", victim, point))
	} else {
		if err := c.start(victim, "", ""); err != nil {
			return Result{}, err
		}
		progress(100, "after the victim restarted")
	}
	stopLoad()
	wg.Wait()
	if crashed > 0 {
		// After a process crash, a node's files hold an exact applied
		// index: it starts from them, unless the crash left it with a
		// snapshot newer than its databases (an install under way).
		b, _ := os.ReadFile(filepath.Join(o.Dir, fmt.Sprintf("node%d.log", victim)))
		problems = append(problems, checkRestart(string(b), point)...)
	}
	logf("load over; healing and checking")
	nem := &nemesis{c: c, logf: logf, ops: map[string]int{}}
	finals, more := converge(ctx, c, nem, logf)
	r := w.check(finals[w.db()])
	r.Problems = append(r.Problems, problems...)
	r.Problems = append(r.Problems, more...)
	logf("%s", r)
	for _, p := range r.Problems {
		logf("  problem: %s", p)
	}
	return r, nil
}

// removeDatabases removes the databases of a data directory and their
// applied logs, keeping the Raft log and snapshots.
func removeDatabases(dir string) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		switch e.Name() {
		case "raft.db", "raft-wal", "snapshots", "lock":
			continue
		}
		if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
			return err
		}
	}
	return nil
}

// checkRestart reads a victim's log: after a process crash its files hold
// an exact applied index, so it starts from them (unless the crash left a
// snapshot newer than its databases: an install under way), and at the
// points of a transaction's record, at the index just before the
// transaction (its record not written) or at the transaction's (written).
func checkRestart(log, point string) (problems []string) {
	_, after, found := strings.Cut(log, "crashpoint hit: "+point)
	if !found {
		return []string{"the victim died without reaching crash point " + point}
	}
	hit, after, _ := strings.Cut(point+after, "\n")
	if i := strings.Index(after, "rebuilding the databases"); i >= 0 && !strings.HasPrefix(point, "install-") {
		line, _, _ := strings.Cut(after[i:], "\n")
		return []string{"the victim rebuilt its databases after the crash: " + line}
	}
	f := strings.Fields(hit) // point, database, index
	if len(f) != 3 || !strings.HasSuffix(point, "-written") && !strings.HasSuffix(point, "-recorded") {
		return nil
	}
	i := strings.Index(after, "starting from the database files")
	if i < 0 {
		return []string{"the victim did not start from its files after the crash at " + hit}
	}
	line, _, _ := strings.Cut(after[i:], "\n")
	m := regexp.MustCompile(`\b` + regexp.QuoteMeta(f[1]) + `:(\d+)`).FindStringSubmatch(line)
	if m == nil {
		return []string{fmt.Sprintf("the victim's start does not name database %s: %s", f[1], line)}
	}
	got, _ := strconv.ParseUint(m[1], 10, 64)
	crashed, _ := strconv.ParseUint(f[2], 10, 64)
	if strings.HasSuffix(point, "-recorded") && got != crashed || strings.HasSuffix(point, "-written") && got >= crashed {
		return []string{fmt.Sprintf("crashed at %s, the victim started with %s at index %d", hit, f[1], got)}
	}
	return nil
}
