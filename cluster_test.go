package dqlite

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/godqlite/dqlite/internal/wire"
)

// TestMain fails the run if tests leave goroutines or files behind.
func TestMain(m *testing.M) {
	goroutines, fds := liveGoroutines(), openFiles()
	code := m.Run()
	if code == 0 {
		deadline := time.Now().Add(10 * time.Second)
		for time.Now().Before(deadline) && (liveGoroutines() > goroutines || openFiles() > fds) {
			time.Sleep(50 * time.Millisecond)
		}
		if g, f := liveGoroutines(), openFiles(); g > goroutines || f > fds {
			buf := make([]byte, 1<<20)
			fmt.Fprintf(os.Stderr, "leak: %d goroutines (had %d), %d open files (had %d)\n%s\n",
				g, goroutines, f, fds, buf[:runtime.Stack(buf, true)])
			code = 1
		}
	}
	os.Exit(code)
}

// liveGoroutines counts the goroutines, less those that wait forever on a
// Raft future that hashicorp/raft dropped: at Shutdown, entries already
// handed to its FSM goroutine (apply and barrier futures) and a queued
// leadership transfer are never answered, and those futures do not watch
// for shutdown. Node.propose and Node.await wait on each future in a
// goroutine of their own, which then stays blocked; nothing in this module
// can release it.
func liveGoroutines() int {
	buf := make([]byte, 1<<22)
	buf = buf[:runtime.Stack(buf, true)]
	n := 0
	for _, g := range bytes.Split(buf, []byte("\n\n")) {
		if bytes.Contains(g, []byte("raft.(*deferError).Error")) &&
			(bytes.Contains(g, []byte("dqlite.(*Node).propose.func")) || bytes.Contains(g, []byte("dqlite.(*Node).await.func"))) {
			continue
		}
		n++
	}
	return n
}

func openFiles() int {
	entries, _ := os.ReadDir("/proc/self/fd")
	return len(entries)
}

// testNet connects the nodes of a test cluster over real TCP on 127.0.0.1,
// and can cut the links between groups of them (a partition).
type testNet struct {
	mu      sync.Mutex
	addrs   []string
	blocked map[[2]int]bool
	raftCut map[[2]int]bool // Raft cut, the client protocol not (cutRaft)
	conns   map[[2]int][]net.Conn
}

func (tn *testNet) index(addr string) int {
	tn.mu.Lock()
	defer tn.mu.Unlock()
	for i, a := range tn.addrs {
		if a == addr {
			return i
		}
	}
	return -1
}

func (tn *testNet) dialer(from int) func(ctx context.Context, addr string) (net.Conn, error) {
	return func(ctx context.Context, addr string) (net.Conn, error) {
		to := tn.index(addr)
		tn.mu.Lock()
		blocked := tn.blocked[[2]int{from, to}]
		tn.mu.Unlock()
		if blocked {
			return nil, fmt.Errorf("test partition: %d cannot reach %d", from+1, to+1)
		}
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			return nil, err
		}
		tn.mu.Lock()
		defer tn.mu.Unlock()
		if tn.blocked[[2]int{from, to}] {
			c.Close()
			return nil, fmt.Errorf("test partition: %d cannot reach %d", from+1, to+1)
		}
		tc := &testConn{Conn: c, tn: tn, link: [2]int{from, to}}
		tn.conns[[2]int{from, to}] = append(tn.conns[[2]int{from, to}], tc)
		return tc, nil
	}
}

// testConn is a connection of the test network; its first byte tells a
// client protocol connection from a Raft one.
type testConn struct {
	net.Conn
	tn     *testNet
	link   [2]int
	client atomic.Int32 // 0 unknown, 1 client protocol, 2 Raft
}

// NetConn gives the TCP connection, as *tls.Conn does.
func (c *testConn) NetConn() net.Conn { return c.Conn }

func (c *testConn) Write(b []byte) (int, error) {
	if c.client.Load() == 0 && len(b) > 0 {
		kind := int32(2)
		if b[0] == wire.Magic {
			kind = 1
		}
		c.client.Store(kind)
	}
	if c.client.Load() == 2 {
		c.tn.mu.Lock()
		cut := c.tn.raftCut[c.link]
		c.tn.mu.Unlock()
		if cut {
			c.Conn.Close()
			return 0, fmt.Errorf("test partition: Raft from %d to %d is cut", c.link[0]+1, c.link[1]+1)
		}
	}
	return c.Conn.Write(b)
}

// cutRaft cuts Raft's traffic between nodes i and j both ways, leaving the
// client protocol (forwarded statements) through.
func (tn *testNet) cutRaft(i, j int) {
	tn.mu.Lock()
	defer tn.mu.Unlock()
	if tn.raftCut == nil {
		tn.raftCut = map[[2]int]bool{}
	}
	for _, p := range [][2]int{{i, j}, {j, i}} {
		tn.raftCut[p] = true
		for _, c := range tn.conns[p] {
			if tc, ok := c.(*testConn); ok && tc.client.Load() != 1 {
				tc.Conn.Close()
			}
		}
	}
}

// isolate cuts every link between node i and the others.
func (tn *testNet) isolate(i int) {
	for j := range tn.addrs {
		if j != i {
			tn.cut(i, j)
		}
	}
}

func (tn *testNet) cut(i, j int) {
	tn.mu.Lock()
	defer tn.mu.Unlock()
	for _, p := range [][2]int{{i, j}, {j, i}} {
		tn.blocked[p] = true
		for _, c := range tn.conns[p] {
			c.Close()
		}
		delete(tn.conns, p)
	}
}

func (tn *testNet) heal() {
	tn.mu.Lock()
	defer tn.mu.Unlock()
	clear(tn.blocked)
	clear(tn.raftCut)
}

// cluster is an in-process cluster of nodes for tests.
type cluster struct {
	t     testing.TB
	cfgs  []Config
	nodes []*Node // nil while a node is down
	net   *testNet
	dbs   map[[2]any]*sql.DB
}

func testLogger(t testing.TB) *slog.Logger {
	if testing.Verbose() && os.Getenv("DQLITE_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// newCluster starts n nodes that bootstrap one cluster and waits for a
// leader. opts adjust every node's Config.
func newCluster(t testing.TB, n int, opts ...func(*Config)) *cluster {
	t.Helper()
	c := &cluster{t: t, net: &testNet{blocked: map[[2]int]bool{}, conns: map[[2]int][]net.Conn{}},
		dbs: map[[2]any]*sql.DB{}}
	var listeners []net.Listener
	var peers []Peer
	for i := range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		listeners = append(listeners, l)
		c.net.addrs = append(c.net.addrs, l.Addr().String())
		peers = append(peers, Peer{ID: NodeID(i + 1), Address: l.Addr().String()})
	}
	for i := range n {
		// Short Raft timeouts keep failover tests quick; the race
		// detector slows everything enough that a leader would lose its
		// lease while committing, so they are longer there.
		heartbeat := 500 * time.Millisecond
		if raceEnabled {
			heartbeat = 1500 * time.Millisecond
		}
		cfg := Config{
			ID: NodeID(i + 1), Address: peers[i].Address, Dir: t.TempDir(), Cluster: peers,
			HeartbeatTimeout: heartbeat, ElectionTimeout: heartbeat,
			LeaderLeaseTimeout: heartbeat / 2, ApplyTimeout: 3 * time.Second,
			Logger: testLogger(t), Dial: c.net.dialer(i),
		}
		for _, o := range opts {
			o(&cfg)
		}
		c.cfgs = append(c.cfgs, cfg)
	}
	t.Cleanup(c.close)
	for i := range n {
		c.start(i, listeners[i])
	}
	c.waitLeader()
	return c
}

func (c *cluster) start(i int, l net.Listener) {
	c.t.Helper()
	cfg := c.cfgs[i]
	if l == nil {
		var err error
		for try := 0; ; try++ {
			l, err = net.Listen("tcp", cfg.Address)
			// The old listener's port is being released, or, while it was
			// free, a connection of another test (go test runs packages
			// at once) took it as its local port: most are short-lived.
			if err == nil || try == 250 {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		if err != nil {
			c.t.Fatal(err)
		}
	}
	cfg.Listener = l
	n, err := New(cfg)
	if err != nil {
		l.Close()
		c.t.Fatalf("start node %d: %v", i+1, err)
	}
	for len(c.nodes) <= i {
		c.nodes = append(c.nodes, nil)
	}
	c.nodes[i] = n
}

// stop closes node i (its data directory stays).
// Other goroutines may still be using its *sql.DB handles: they get
// errors, and the handles are closed after the node.
func (c *cluster) stop(i int) {
	c.t.Helper()
	if err := c.nodes[i].Close(); err != nil {
		c.t.Errorf("close node %d: %v", i+1, err)
	}
	c.nodes[i] = nil
	for k, db := range c.dbs {
		if k[0] == i {
			db.Close()
			delete(c.dbs, k)
		}
	}
}

func (c *cluster) restart(i int) { c.t.Helper(); c.start(i, nil) }

func (c *cluster) close() {
	for i, n := range c.nodes {
		if n != nil {
			c.stop(i)
		}
	}
}

func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// waitLeader returns the index of the ready leader.
func (c *cluster) waitLeader() int {
	c.t.Helper()
	return c.waitLeaderWithin(20 * time.Second)
}

// waitLeaderWithin returns the index of the ready leader, waiting up to
// timeout for one.
func (c *cluster) waitLeaderWithin(timeout time.Duration) int {
	c.t.Helper()
	leader := -1
	waitFor(c.t, timeout, "a ready leader", func() bool {
		for i, n := range c.nodes {
			if n != nil && n.IsLeader() {
				leader = i
				return true
			}
		}
		return false
	})
	return leader
}

// db returns node i's *sql.DB for database name.
func (c *cluster) db(i int, name string) *sql.DB {
	c.t.Helper()
	if db := c.dbs[[2]any{i, name}]; db != nil {
		return db
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	db, err := c.nodes[i].Open(ctx, name)
	if err != nil {
		c.t.Fatalf("open %s on node %d: %v", name, i+1, err)
	}
	c.dbs[[2]any{i, name}] = db
	return db
}

// dbNoFwd returns node i's *sql.DB for database name with forwarding off:
// a write on a follower fails with ErrNotLeader.
func (c *cluster) dbNoFwd(i int, name string) *sql.DB {
	c.t.Helper()
	key := [2]any{i, "no forwarding: " + name}
	if db := c.dbs[key]; db != nil {
		return db
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	db, err := c.nodes[i].OpenWith(ctx, name, DBOptions{NoForwarding: true})
	if err != nil {
		c.t.Fatalf("open %s on node %d: %v", name, i+1, err)
	}
	c.dbs[key] = db
	return db
}

// mustConn returns one connection of db, closed when the test ends (before
// its cluster).
func mustConn(t testing.TB, db *sql.DB) *sql.Conn {
	t.Helper()
	conn, err := db.Conn(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// dump returns the content of every table of database name on node i.
func dump(t testing.TB, db *sql.DB) string {
	t.Helper()
	rows, err := db.Query(`SELECT name FROM sqlite_schema WHERE type='table' ORDER BY name`)
	if err != nil {
		t.Fatal(err)
	}
	var tables []string
	for rows.Next() {
		var s string
		rows.Scan(&s)
		tables = append(tables, s)
	}
	rows.Close()
	var b strings.Builder
	for _, tb := range tables {
		rows, err := db.Query(fmt.Sprintf(`SELECT * FROM %q ORDER BY rowid`, tb))
		if err != nil && strings.Contains(err.Error(), "no such column: rowid") { // WITHOUT ROWID
			rows, err = db.Query(fmt.Sprintf(`SELECT * FROM %q`, tb))
		}
		if err != nil {
			t.Fatal(err)
		}
		cols, _ := rows.Columns()
		fmt.Fprintf(&b, "%s%v:", tb, cols)
		vals := make([]any, len(cols))
		ptrs := make([]any, len(cols))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		for rows.Next() {
			if err := rows.Scan(ptrs...); err != nil {
				t.Fatal(err)
			}
			fmt.Fprintf(&b, " %#v;", vals)
		}
		if err := rows.Err(); err != nil {
			t.Fatal(err)
		}
		rows.Close()
	}
	return b.String()
}

// ids returns the set of values of column id of table t.
func ids(t testing.TB, db *sql.DB, query string) map[int64]bool {
	t.Helper()
	rows, err := db.Query(query)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	got := map[int64]bool{}
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			t.Fatal(err)
		}
		got[id] = true
	}
	return got
}

// outcome records what the clients of a test were told.
type outcome struct {
	mu        sync.Mutex
	acked     map[int64]bool // commit returned nil
	failed    map[int64]bool // commit failed, surely not applied
	ambiguous map[int64]bool // commit failed, may or may not be applied
}

func newOutcome() *outcome {
	return &outcome{acked: map[int64]bool{}, failed: map[int64]bool{}, ambiguous: map[int64]bool{}}
}

func (o *outcome) record(id int64, err error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	switch {
	case err == nil:
		o.acked[id] = true
	case errors.Is(err, ErrLeadershipLost) || errors.Is(err, ErrNoQuorum) || errors.Is(err, ErrClosed):
		o.ambiguous[id] = true
	default:
		o.failed[id] = true
	}
}

// check verifies the invariants of DESIGN.md on every running node for
// database name, whose rows' ids query lists: every acknowledged id is
// present everywhere, no failed id anywhere, every node has the same
// content, identical files after a checkpoint, and integrity_check ok.
func (c *cluster) check(name, query string, o *outcome) {
	c.t.Helper()
	var live []int
	for i, n := range c.nodes {
		if n != nil {
			live = append(live, i)
		}
	}
	// Converge: every node applied everything the leader has. Spares
	// receive nothing: they are left out.
	l := c.waitLeader()
	if ms, err := c.nodes[l].Members(context.Background()); err == nil {
		live = slices.DeleteFunc(live, func(i int) bool {
			return slices.ContainsFunc(ms, func(p Peer) bool { return p.ID == c.nodes[i].ID() && p.Role == Spare })
		})
	}
	if err := c.nodes[l].raft.Barrier(10 * time.Second).Error(); err != nil {
		c.t.Fatalf("barrier: %v", err)
	}
	target := c.nodes[l].raft.AppliedIndex()
	waitFor(c.t, 20*time.Second, "nodes to apply the whole log", func() bool {
		for _, i := range live {
			if c.nodes[i].raft.AppliedIndex() < target {
				return false
			}
		}
		return true
	})
	var want string
	waitFor(c.t, 20*time.Second, "nodes to converge", func() bool {
		want = dump(c.t, c.db(live[0], name))
		for _, i := range live[1:] {
			if dump(c.t, c.db(i, name)) != want {
				return false
			}
		}
		return true
	})
	if o != nil {
		for _, i := range live {
			got := ids(c.t, c.db(i, name), query)
			for id := range o.acked {
				if !got[id] {
					c.t.Errorf("node %d: acknowledged row %d is missing", i+1, id)
				}
			}
			for id := range o.failed {
				if got[id] {
					c.t.Errorf("node %d: failed row %d is present", i+1, id)
				}
			}
		}
	}
	var files [][]byte
	for _, i := range live {
		var ok string
		if err := c.db(i, name).QueryRow(`PRAGMA integrity_check`).Scan(&ok); err != nil || ok != "ok" {
			c.t.Errorf("node %d: integrity_check: %q, %v", i+1, ok, err)
		}
		d := c.nodes[i].fsm.Database(name)
		if err := d.CheckpointNow(10 * time.Second); err != nil {
			c.t.Fatalf("node %d: checkpoint: %v", i+1, err)
		}
		b, err := os.ReadFile(d.Path())
		if err != nil {
			c.t.Fatal(err)
		}
		files = append(files, b)
	}
	for k := 1; k < len(files); k++ {
		if !bytes.Equal(files[0], files[k]) {
			c.t.Errorf("database files of nodes %d and %d differ after checkpoint (%d and %d bytes)",
				live[0]+1, live[k]+1, len(files[0]), len(files[k]))
		}
	}
}

func writeFile(path string, b []byte) error { return os.WriteFile(path, b, 0o644) }

type sqlTxOptions = sql.TxOptions

func sqlNamed(name string, v any) sql.NamedArg { return sql.Named(name, v) }
