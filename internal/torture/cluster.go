package torture

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// procState is what the driver knows of a node process.
type procState int

const (
	down     procState = iota
	starting           // started, its endpoint not answering yet
	up
	paused
)

// proc is one slot of the cluster: a port pair and a data directory that
// node processes come and go on.
type proc struct {
	slot     int
	dir      string
	raftF    *os.File // the listeners, held by the driver across restarts
	httpF    *os.File
	raftAddr string
	httpAddr string

	// guarded by cluster.mu
	id       uint64
	state    procState
	member   bool
	cmd      *exec.Cmd
	stdin    io.WriteCloser
	exited   chan struct{}
	killing  bool // the driver is stopping it: its exit is expected
	exitErr  error
	crash    string // armed at its next start: -crash point:n
	crashing bool   // it is armed: its exit is expected, and counted in crashed
	crashed  int
	wiped    bool   // its directory was removed: it may only come back under a new ID
	idAtWipe uint64 // the ID it had then
	starts   int
}

// cluster runs the node processes of a torture run.
type cluster struct {
	exe      []string
	dir      string
	logStore string
	logf     func(format string, a ...any)
	client   *http.Client

	faultGen atomic.Int64 // generation of the nemesis's last /fault request

	mu      sync.Mutex
	procs   []*proc
	nextID  uint64
	crashes []string // unexpected exits
}

func newCluster(exe []string, dir string, nodes int, logStore string, logf func(string, ...any)) (*cluster, error) {
	c := &cluster{exe: exe, dir: dir, logStore: logStore, logf: logf,
		client: &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}}
	var slots []string
	for i := 0; i <= nodes; i++ { // one spare slot for membership changes
		p := &proc{slot: i, dir: filepath.Join(dir, fmt.Sprintf("node%d", i))}
		for _, l := range []struct {
			f    **os.File
			addr *string
		}{{&p.raftF, &p.raftAddr}, {&p.httpF, &p.httpAddr}} {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				c.close()
				return nil, err
			}
			*l.addr = ln.Addr().String()
			*l.f, err = ln.(*net.TCPListener).File()
			ln.Close()
			if err != nil {
				c.close()
				return nil, err
			}
		}
		c.procs = append(c.procs, p)
		slots = append(slots, fmt.Sprintf("%d=%s", i, p.raftAddr))
	}
	c.nextID = uint64(nodes) + 1
	var peers []string
	for i := 0; i < nodes; i++ {
		p := c.procs[i]
		p.id, p.member = uint64(i+1), true
		peers = append(peers, fmt.Sprintf("%d=%s", p.id, p.raftAddr))
	}
	for i := 0; i < nodes; i++ {
		if err := c.start(i, strings.Join(peers, ","), strings.Join(slots, ",")); err != nil {
			c.close()
			return nil, err
		}
	}
	return c, nil
}

// slotList is the -slots argument of every node.
func (c *cluster) slotList() string {
	var s []string
	for _, p := range c.procs {
		s = append(s, fmt.Sprintf("%d=%s", p.slot, p.raftAddr))
	}
	return strings.Join(s, ",")
}

// start starts the node of slot i with its current ID; bootstrap, if not
// empty, is the cluster it starts with.
func (c *cluster) start(i int, bootstrap, slots string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	p := c.procs[i]
	if p.state != down {
		return fmt.Errorf("slot %d is already running", i)
	}
	if p.wiped && p.starts > 0 && p.idAtWipe == p.id {
		return fmt.Errorf("slot %d's directory was wiped: node %d cannot come back (a voter that forgot its log)", i, p.id)
	}
	if slots == "" {
		slots = c.slotList()
	}
	args := append(append([]string{}, c.exe[1:]...), NodeFlag, "-slot", fmt.Sprint(i), "-id", fmt.Sprint(p.id),
		"-dir", p.dir, "-slots", slots, "-logstore", c.logStore, "-fault-gen", fmt.Sprint(c.faultGen.Load()))
	if bootstrap != "" {
		args = append(args, "-cluster", bootstrap)
	}
	if p.crash != "" {
		args = append(args, "-crash", p.crash)
		p.crash, p.crashing = "", true
	}
	cmd := exec.Command(c.exe[0], args...)
	cmd.ExtraFiles = []*os.File{p.raftF, p.httpF}
	logFile, err := os.OpenFile(filepath.Join(c.dir, fmt.Sprintf("node%d.log", i)), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	fmt.Fprintf(logFile, "=== start %d of slot %d as node %d\n", p.starts+1, i, p.id)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	stdin, err := cmd.StdinPipe()
	if err != nil {
		logFile.Close()
		return err
	}
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return err
	}
	p.cmd, p.stdin, p.state, p.killing, p.exited = cmd, stdin, starting, false, make(chan struct{})
	p.starts++
	exited := p.exited
	go func() {
		// Up once its endpoint answers: clients do not queue requests on a
		// node that is still starting.
		for {
			select {
			case <-exited:
				return
			case <-time.After(50 * time.Millisecond):
			}
			if _, err := c.status(context.Background(), i); err == nil {
				c.mu.Lock()
				if p.cmd == cmd && p.state == starting {
					p.state = up
				}
				c.mu.Unlock()
				return
			}
		}
	}()
	go func() {
		err := cmd.Wait()
		logFile.Close()
		c.mu.Lock()
		if p.cmd == cmd {
			if p.crashing && !p.killing {
				p.crashed++
				c.logf("slot %d (node %d) died at its crash point (see node%d.log)", i, p.id, i)
			} else if !p.killing {
				msg := fmt.Sprintf("slot %d (node %d) exited on its own: %v (see node%d.log)", i, p.id, err, i)
				c.crashes = append(c.crashes, msg)
				c.logf("%s", msg)
			}
			p.state, p.cmd, p.exitErr, p.crashing = down, nil, err, false
		}
		c.mu.Unlock()
		close(exited)
	}()
	return nil
}

// kill stops slot i's process: with SIGKILL, or SIGTERM if clean, then
// waits for it to exit.
func (c *cluster) kill(i int, clean bool) error {
	c.mu.Lock()
	p := c.procs[i]
	if p.state == down {
		c.mu.Unlock()
		return nil
	}
	p.killing = true
	proc, exited, wasPaused := p.cmd.Process, p.exited, p.state == paused
	c.mu.Unlock()
	if clean {
		if wasPaused {
			resume(proc)
		}
		terminate(proc)
		select {
		case <-exited:
			c.mu.Lock()
			defer c.mu.Unlock()
			if p.exitErr != nil {
				return fmt.Errorf("slot %d stopped with %v (see node%d.log)", i, p.exitErr, i)
			}
			return nil
		case <-time.After(30 * time.Second):
			dump(proc) // its goroutines, in its log
			select {
			case <-exited:
			case <-time.After(5 * time.Second):
				proc.Kill()
				<-exited
			}
			return fmt.Errorf("slot %d did not stop within 30s of SIGTERM (stuck; its goroutines are in node%d.log)", i, i)
		}
	}
	proc.Kill()
	<-exited
	return nil
}

// pause stops slot i's process with SIGSTOP; resume continues it.
func (c *cluster) pause(i int) error  { return c.signal(i, up, paused, pause) }
func (c *cluster) resume(i int) error { return c.signal(i, paused, up, resume) }

// signal moves slot i's process from state from to state to by sending it
// a signal; in any other state it does nothing.
func (c *cluster) signal(i int, from, to procState, send func(*os.Process) error) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	p := c.procs[i]
	if p.state != from {
		return nil
	}
	if err := send(p.cmd.Process); err != nil {
		return err
	}
	p.state = to
	return nil
}

// wipe removes slot i's data directory.
func (c *cluster) wipe(i int) error {
	c.mu.Lock()
	p := c.procs[i]
	p.wiped, p.idAtWipe = true, p.id
	c.mu.Unlock()
	return os.RemoveAll(p.dir)
}

// waitUp waits up to d for slot i's endpoint to answer.
func (c *cluster) waitUp(i int, d time.Duration) bool {
	for deadline := time.Now().Add(d); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		states, _, _ := c.view()
		if states[i] == up {
			return true
		}
	}
	return false
}

// close kills every node and releases the listeners.
func (c *cluster) close() {
	for i := range c.procs {
		c.kill(i, false)
	}
	for _, p := range c.procs {
		if p.raftF != nil {
			p.raftF.Close()
		}
		if p.httpF != nil {
			p.httpF.Close()
		}
	}
}

// view returns the state of every slot.
func (c *cluster) view() (states []procState, members []bool, ids []uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, p := range c.procs {
		states = append(states, p.state)
		members = append(members, p.member)
		ids = append(ids, p.id)
	}
	return
}

// upMembers lists the slots of members whose process runs.
func (c *cluster) upMembers() []int {
	states, members, _ := c.view()
	var s []int
	for i := range states {
		if members[i] && states[i] == up {
			s = append(s, i)
		}
	}
	return s
}

func (c *cluster) memberSlots() []int {
	_, members, _ := c.view()
	var s []int
	for i, m := range members {
		if m {
			s = append(s, i)
		}
	}
	return s
}

// outcome of a request, as the client must take it.
type outcome int

const (
	ok outcome = iota
	failed
	unknown
)

func (o outcome) String() string { return [...]string{"ok", "failed", "unknown"}[o] }

// call sends a request to slot i's endpoint and says what came of it.
func (c *cluster) call(ctx context.Context, i int, path string, q map[string]int64) (reply, outcome) {
	v := url.Values{}
	for k, n := range q {
		v.Set(k, fmt.Sprint(n))
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+c.procs[i].httpAddr+path+"?"+v.Encode(), nil)
	if err != nil {
		return reply{Err: err.Error()}, failed
	}
	resp, err := c.client.Do(req)
	if err != nil {
		// Refused: nothing was sent. Anything else may have run.
		if errors.Is(err, syscall.ECONNREFUSED) {
			return reply{Err: err.Error()}, failed
		}
		return reply{Err: err.Error(), Kind: kindUnknown}, unknown
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return reply{Err: err.Error(), Kind: kindUnknown}, unknown
	}
	if resp.StatusCode != http.StatusOK {
		return reply{Err: fmt.Sprintf("HTTP %d: %s", resp.StatusCode, bytes.TrimSpace(body))}, failed
	}
	var rep reply
	if err := json.Unmarshal(body, &rep); err != nil {
		return reply{Err: err.Error(), Kind: kindUnknown}, unknown
	}
	switch {
	case rep.OK:
		return rep, ok
	case rep.Kind == kindUnknown:
		return rep, unknown
	}
	return rep, failed
}

// status asks slot i for its status, within a second.
func (c *cluster) status(ctx context.Context, i int) (*status, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	rep, o := c.call(ctx, i, "/status", nil)
	if o != ok || rep.Status == nil {
		return nil, fmt.Errorf("slot %d: status: %s", i, rep.Err)
	}
	return rep.Status, nil
}

// leader returns the slot of a member that says it leads, or -1.
func (c *cluster) leader(ctx context.Context) int {
	for _, i := range c.upMembers() {
		if st, err := c.status(ctx, i); err == nil && st.IsLeader {
			return i
		}
	}
	return -1
}

// waitLeader waits up to d for a leader.
func (c *cluster) waitLeader(ctx context.Context, d time.Duration) int {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		if l := c.leader(ctx); l >= 0 {
			return l
		}
		time.Sleep(100 * time.Millisecond)
	}
	return -1
}

func (c *cluster) setMember(i int, m bool) {
	c.mu.Lock()
	c.procs[i].member = m
	c.mu.Unlock()
}

func (c *cluster) isMember(i int) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.procs[i].member
}
