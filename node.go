package dqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"

	"github.com/godqlite/dqlite/driver"
	"github.com/godqlite/dqlite/internal/command"
	"github.com/godqlite/dqlite/internal/fsm"
	"github.com/godqlite/dqlite/internal/metrics"
)

// Node is one member of a dqlite cluster: a Raft peer that holds a copy of
// every database in its data directory.
type Node struct {
	cfg        Config
	raft       *raft.Raft
	fsm        *fsm.FSM
	trans      *raft.NetworkTransport
	stream     *streamLayer // the transport's connections; peersReport dials through it
	store      logStore
	snaps      *fsm.Store
	snapping   atomic.Bool // a snapshot asked for by boundLog is under way
	lock       *os.File
	notifyCh   chan bool
	diskErr    chan struct{} // this node's disk refused a write
	diskErrAt  atomic.Int64  // when it last did (Unix ns)
	done       chan struct{}
	unregister func()
	wg         sync.WaitGroup
	up         chan struct{} // closed when New returns: clients are served once upOK
	upOK       atomic.Bool
	serveCtx   context.Context // of client protocol sessions; cancelled by Close
	stopServe  context.CancelFunc
	writeFloor atomic.Uint64 // highest index of a write forwarded through this node
	metrics    *metrics.Set  // nil when metrics are off
	http       *httpAPI      // nil when the HTTP API is off
	roleRounds atomic.Int64  // rounds of role management run (for tests)

	mu       sync.Mutex
	closed   bool
	epoch    uint64 // changes whenever readiness is lost or leadership changes
	ready    bool   // leader, and every entry of earlier terms applied
	term     uint64 // the Raft term in which it became ready
	conns    map[uint64]driver.Aborter
	nextConn uint64
}

// New starts a node. With Config.Cluster set on an empty data directory it
// bootstraps a new cluster; on a directory with state it rejoins the
// cluster recorded there. The node's databases are rebuilt from the Raft
// snapshot and log.
//
// New never replaces data it cannot account for: a directory that holds
// databases but no Raft state (its log was lost, or the files were copied
// in) fails with ErrNeedsRecovery, whose message says how to proceed.
func New(cfg Config) (*Node, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("data dir: %w", err)
	}
	n := &Node{cfg: cfg, notifyCh: make(chan bool, 16), diskErr: make(chan struct{}, 1), done: make(chan struct{}), up: make(chan struct{}),
		conns: map[uint64]driver.Aborter{}}
	var cleanup []func()
	fail := func(err error) (*Node, error) {
		for i := len(cleanup) - 1; i >= 0; i-- {
			cleanup[i]()
		}
		return nil, err
	}

	// The directory lock first: it keeps a second node off the directory
	// before anything in it is touched.
	lock, err := lockDir(cfg.Dir)
	if err != nil {
		return fail(err)
	}
	cleanup = append(cleanup, func() { lock.Close() })
	n.lock = lock
	if err := checkNodeID(lock, cfg.ID, false); err != nil {
		return fail(err)
	}
	hlog := newHclog(cfg.Logger)
	store, err := openLogStore(cfg, hlog)
	if err != nil {
		return fail(err)
	}
	n.store = store
	cleanup = append(cleanup, func() { store.Close() })

	snaps, err := fsm.OpenStore(filepath.Join(cfg.Dir, "snapshots"), cfg.Logger, cfg.SnapshotRate)
	if err != nil {
		return fail(fmt.Errorf("snapshot store: %w", err))
	}
	n.snaps = snaps
	exists, err := raft.HasExistingState(store, store, snaps)
	if err != nil {
		return fail(fmt.Errorf("read raft state: %w", err))
	}
	if !exists {
		// Without Raft state, starting would replace every database here:
		// with the cluster's copy, or with an empty one if Cluster starts
		// a new cluster. Only an operator can tell which is right.
		if files := fsm.DatabaseFiles(cfg.Dir); len(files) > 0 {
			return fail(fmt.Errorf("%w: %s holds databases (%s) but no Raft state (its Raft log is missing or empty), "+
				"and starting would replace them. If the cluster's other nodes have the data, delete these files "+
				"(with their -wal and -shm files) and start the node again to receive the cluster's copy; "+
				"to keep this copy, move the files away first and load them into the cluster with SQL",
				ErrNeedsRecovery, cfg.Dir, strings.Join(files, ", ")))
		}
	}
	n.metrics = n.newMetrics()
	if n.metrics != nil && cfg.Metrics != nil {
		if err := cfg.Metrics.Register(n.metrics); err != nil {
			return fail(fmt.Errorf("register metrics: %w", err))
		}
		cleanup = append(cleanup, n.stopMetrics)
	}
	n.fsm, err = fsm.New(cfg.Dir, fsm.Options{
		Metrics:          n.metrics,
		NodeID:           uint64(cfg.ID),
		MaxTxSize:        cfg.MaxTxSize,
		CheckpointFrames: uint32(cfg.CheckpointFrames),
		Logger:           cfg.Logger,
		Propose:          n.propose,
		CheckWrite:       n.checkLeader,
		Unready:          n.unready,
		Term:             n.readyTerm,
		SnapshotIndex:    snaps.LatestIndex,
		DiskError: func(error) {
			n.diskErrAt.Store(time.Now().UnixNano())
			select {
			case n.diskErr <- struct{}{}:
			default:
			}
		},
	})
	if h := cfg.hooks; h != nil {
		n.fsm.SetAfterCommit(func() {
			if h.afterCommit != nil {
				h.afterCommit()
			}
		})
		n.fsm.SetBeforeBatch(func(queued func() int) {
			if h.beforeBatch != nil {
				h.beforeBatch(queued)
			}
		})
	}
	if err != nil {
		return fail(fmt.Errorf("databases: %w", err))
	}
	cleanup = append(cleanup, func() { n.fsm.Close() })
	restore, err := n.checkFiles(snaps)
	if err != nil {
		return fail(err)
	}

	stream, err := newStreamLayer(cfg)
	if err != nil {
		return fail(fmt.Errorf("listen on %s: %w", cfg.Address, err))
	}
	n.stream = stream
	n.serveCtx, n.stopServe = context.WithCancel(context.Background())
	stream.serve = func(c net.Conn) {
		// A client may connect while New is still building the node.
		<-n.up
		if !n.upOK.Load() {
			c.Close()
			return
		}
		driver.Serve(n.serveCtx, c, backend{n})
	}
	stream.start()
	if err := n.listenHTTP(); err != nil {
		return fail(err)
	}
	if n.http != nil {
		cleanup = append(cleanup, func() { n.http.ln.Close() })
	}
	// No pipelined replication (MaxRPCsInFlight 1): in hashicorp/raft
	// v1.7.3 a follower that refuses an append can leave the leader's
	// pipeline to it stuck for good, heartbeats still flowing, and the
	// leader's Shutdown hanging on it; the fault-injection suite caught a
	// leader in that state (DESIGN.md, "Raft log").
	n.trans = raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		Stream: stream, MaxPool: 3, Timeout: 10 * time.Second, Logger: hlog, MaxRPCsInFlight: 1,
	})
	cleanup = append(cleanup, func() { n.trans.Close() })
	cleanup = append(cleanup, func() { close(n.up) }) // before the transport closes: it waits for serve

	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(strconv.FormatUint(uint64(cfg.ID), 10))
	rc.HeartbeatTimeout = cfg.HeartbeatTimeout
	rc.ElectionTimeout = cfg.ElectionTimeout
	rc.LeaderLeaseTimeout = cfg.LeaderLeaseTimeout
	rc.SnapshotThreshold = cfg.SnapshotThreshold
	rc.SnapshotInterval = cfg.SnapshotInterval
	rc.TrailingLogs = cfg.TrailingLogs
	rc.MaxAppendEntries = 8
	// A follower learns that an entry committed from the leader's next
	// append, which an idle leader sends every CommitTimeout: 2 ms instead
	// of 50 shows a commit on a follower within 5 ms (median) instead of
	// 78, for about 1% of a core per idle node (DESIGN.md, "Raft log").
	rc.CommitTimeout = 2 * time.Millisecond
	rc.NotifyCh = n.notifyCh
	rc.Logger = hlog
	rc.NoSnapshotRestoreOnStart = !restore

	if len(cfg.Cluster) > 0 && !exists {
		if err := raft.BootstrapCluster(rc, store, store, snaps, n.trans, configuration(cfg.Cluster)); err != nil {
			return fail(fmt.Errorf("bootstrap: %w", err))
		}
	}
	// Raft reads the entry before the ones it sends, and sends (empty)
	// appends every CommitTimeout even when idle: without a cache each of
	// those decodes the last entry from the store again, which for a
	// transaction of many MiB costs a core and GiBs of garbage a second.
	// Two entries bound what the cache holds to two transactions.
	logs, err := raft.NewLogCache(2, store)
	if err != nil {
		return fail(err)
	}
	n.raft, err = raft.NewRaft(rc, n.fsm, logs, store, snaps, n.trans)
	if err != nil {
		return fail(fmt.Errorf("start raft: %w", err))
	}
	n.fsm.Holds(snaps.LatestIndex())
	n.wg.Add(1)
	go n.watchLeadership()
	n.watchRaftState()
	if cfg.Roles != nil {
		n.wg.Add(1)
		go n.manageRoles()
	}
	n.unregister = driver.RegisterBackend(n.Address(), backend{n})
	n.upOK.Store(true)
	close(n.up)
	n.serveHTTP()
	return n, nil
}

// checkFiles decides how the node's databases start: from their files,
// at the Raft index each holds (Raft then applies only later entries), or,
// when those files cannot be trusted or are older than the latest
// snapshot says they must be, rebuilt from the snapshot and the log. It
// reports whether to rebuild, having removed the files then.
func (n *Node) checkFiles(snaps *fsm.Store) (rebuild bool, err error) {
	why := n.fsm.Untrusted()
	applied := n.fsm.Applied()
	if latest, ok := snaps.Latest(); ok && why == "" {
		for _, db := range latest.DBs {
			if got, have := applied[db.Name]; !have || got < db.Index {
				why = fmt.Sprintf("database %s holds index %d, but the latest snapshot (index %d) holds it at index %d",
					db.Name, got, latest.Raft.Index, db.Index)
				break
			}
		}
	}
	if why == "" {
		if len(applied) > 0 {
			n.cfg.Logger.Info("starting from the database files", "applied", applied)
		}
		return false, nil
	}
	n.cfg.Logger.Warn("rebuilding the databases from the snapshot and the log: the files cannot be trusted", "why", why)
	if err := n.fsm.Reset(); err != nil {
		return false, fmt.Errorf("databases: %w", err)
	}
	return true, nil
}

func configuration(peers []Peer) raft.Configuration {
	var c raft.Configuration
	for _, p := range peers {
		s := raft.Server{Suffrage: raft.Voter, ID: serverID(p.ID), Address: raft.ServerAddress(p.Address)}
		switch p.Role {
		case Standby:
			s.Suffrage = raft.Nonvoter
		case Spare:
			s.Suffrage, s.Address = raft.Nonvoter, spareMark+s.Address
		}
		c.Servers = append(c.Servers, s)
	}
	return c
}

// Bootstrap starts a new cluster of peers (which must include this node)
// on a node created without Config.Cluster, for example because its port
// was only known once it listened. Call it on every initial member, with
// the same peers.
func (n *Node) Bootstrap(peers []Peer) error {
	cfg := n.cfg
	cfg.Cluster, cfg.Address, cfg.Listener = peers, n.Address(), nil
	if err := cfg.Validate(); err != nil {
		return err
	}
	return n.raft.BootstrapCluster(configuration(peers)).Error()
}

// ID returns the node's ID.
func (n *Node) ID() NodeID { return n.cfg.ID }

// Address returns the address the node's Raft transport listens on.
func (n *Node) Address() string { return string(n.trans.LocalAddr()) }

// Dir returns the node's data directory.
func (n *Node) Dir() string { return n.cfg.Dir }

// Leader returns the ID and address of the current leader, or zero values
// when none is known.
func (n *Node) Leader() (NodeID, string) {
	addr, id := n.raft.LeaderWithID()
	return nodeID(id), string(addr)
}

// AppliedIndex returns the Raft index of the last entry this node has
// applied: every reader on this node sees it and what came before.
func (n *Node) AppliedIndex() uint64 { return n.fsm.AppliedIndex() }

// WaitApplied blocks until this node has applied Raft index index (a
// commit index that WithCommitIndex recorded, perhaps on another node),
// or until ctx is done or the node closes.
func (n *Node) WaitApplied(ctx context.Context, index uint64) error {
	return n.fsm.WaitApplied(ctx, index)
}

// SnapshotIndex returns the Raft index of the latest snapshot this node
// holds (taken or received), or 0.
func (n *Node) SnapshotIndex() uint64 {
	return n.snaps.LatestIndex()
}

// IsLeader reports whether this node is the leader and ready for writes.
func (n *Node) IsLeader() bool { return n.checkLeader() == nil }

// Open returns a *sql.DB for the database name, creating it on the cluster
// when it does not exist yet. Creation needs the leader: on another node,
// Open waits for the leader to create it. When ctx has no deadline, Open
// gives up after Config.OpenTimeout; an error then says why (no leader,
// and which peers this node cannot reach; or the database does not exist
// and the leader is elsewhere).
//
// A name is a file name in the data directory: at most 200 bytes of UTF-8,
// no path separators, control characters or characters Windows forbids
// (:*?"<>|), not "." or "..", no trailing dot or space, not a Windows
// device name (CON, NUL, COM1…), not a name the node uses itself (raft.db,
// raft-wal, snapshots, lock), not ending in -wal, -shm or -journal. Other
// names fail with ErrInvalidName.
func (n *Node) Open(ctx context.Context, name string) (*sql.DB, error) {
	return n.OpenWith(ctx, name, DBOptions{})
}

// DBOptions are the settings of a *sql.DB that OpenWith returns.
type DBOptions = driver.Options

// OpenWith is Open with options: forwarding off (a write on a follower
// then fails with ErrNotLeader, and Open on a follower waits for the
// leader to create a database), or a default read level.
func (n *Node) OpenWith(ctx context.Context, name string, opts DBOptions) (*sql.DB, error) {
	d, err := n.database(ctx, name, !opts.NoForwarding)
	if err != nil {
		return nil, err
	}
	if err := d.Failed(); err != nil {
		return nil, err
	}
	return sql.OpenDB(driver.NewConnectorWith(backend{n}, name, opts)), nil
}

// database returns database name, waiting for it to exist. The leader
// creates it; another node asks the leader to (if forward), or waits.
func (n *Node) database(ctx context.Context, name string, forward bool) (*fsm.DB, error) {
	if err := n.fsm.CheckName(name); err != nil {
		return nil, err
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, n.cfg.OpenTimeout)
		defer cancel()
	}
	asked := false // the leader answered a request to create it
	for {
		if err := n.checkOpen(); err != nil {
			return nil, err
		}
		if d := n.fsm.Database(name); d != nil {
			return d, nil
		}
		if err := n.fsm.OpenError(name); err != nil {
			return nil, err
		}
		err := n.checkLeader()
		if err == nil {
			err = n.propose(command.EncodeOpen(command.Open{Database: name, PageSize: uint32(n.cfg.PageSize)}))
			if err == nil {
				continue
			}
		} else if forward && !asked && errors.Is(err, ErrNotLeader) {
			// Once the leader has it, this node only waits to apply it.
			if err = n.createOnLeader(ctx, name); err == nil {
				asked = true
			}
		}
		if errors.Is(err, ErrClosed) || errors.Is(err, ErrInvalidName) {
			return nil, err
		}
		wait, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
		d, werr := n.fsm.Wait(wait, name)
		cancel()
		if d != nil {
			return d, nil
		}
		if ctx.Err() != nil {
			return nil, n.explain(fmt.Sprintf("open %s", name), ctx.Err(), err)
		}
		if errors.Is(werr, ErrClosed) {
			return nil, werr
		}
	}
}

// explain turns a wait for the leader that ran out (ctxErr) into an error
// that says why: no leader, and which peers this node cannot reach; or a
// leader elsewhere that has not created the database; or the last error
// seen (last).
func (n *Node) explain(op string, ctxErr, last error) error {
	id, addr := n.Leader()
	switch {
	case id == 0 || addr == "":
		return fmt.Errorf("%s: %w: %s (%w)", op, ErrNoLeader, n.peersReport(), ctxErr)
	case id != n.cfg.ID:
		return fmt.Errorf("%s: %w: the database does not exist yet, and only the leader (node %d at %s) creates it: "+
			"open it there first (%w)", op, ErrNoDatabase, id, addr, ctxErr)
	}
	return fmt.Errorf("%s: %w (%w)", op, ctxErr, last)
}

// peersReport says which members this node can reach over TCP right now,
// for errors about a missing leader.
func (n *Node) peersReport() string {
	f := n.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return "cannot read the cluster's configuration: " + err.Error()
	}
	servers := f.Configuration().Servers
	if len(servers) == 0 {
		return "this node is in no cluster yet: set Config.Cluster to start one, or have the leader add it with AddVoter"
	}
	self := serverID(n.cfg.ID)
	results := make([]error, len(servers))
	var wg sync.WaitGroup
	for i, s := range servers {
		if s.ID == self {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := n.stream.Dial(s.Address, time.Second)
			if err == nil {
				c.Close()
			}
			results[i] = err
		}()
	}
	wg.Wait()
	var down, up []string
	for i, s := range servers {
		switch {
		case s.ID == self:
		case results[i] != nil:
			down = append(down, fmt.Sprintf("node %s at %s (%v)", s.ID, s.Address, results[i]))
		default:
			up = append(up, fmt.Sprintf("node %s at %s", s.ID, s.Address))
		}
	}
	switch {
	case len(servers) == 1:
		return "this node is the cluster's only member and not elected yet"
	case len(down) == 0:
		return fmt.Sprintf("every peer answers (%s), but no election succeeded yet", strings.Join(up, ", "))
	}
	return fmt.Sprintf("%d of %d peers unreachable: %s", len(down), len(servers)-1, strings.Join(down, "; "))
}

// checkLeader returns nil when this node may commit writes now.
func (n *Node) checkLeader() error {
	n.mu.Lock()
	closed, ready := n.closed, n.ready
	n.mu.Unlock()
	if closed {
		return ErrClosed
	}
	if ready && n.raft.State() == raft.Leader {
		return nil
	}
	id, addr := n.Leader()
	return &NotLeaderError{LeaderID: id, LeaderAddress: addr}
}

// propose replicates one command. It is the fsm.Proposer of this node.
func (n *Node) propose(cmd []byte) error {
	if err := n.checkLeader(); err != nil {
		return err
	}
	if h := n.cfg.hooks; h != nil && h.beforePropose != nil && len(cmd) > 1 && cmd[1] == byte(command.TypeFrames) {
		h.beforePropose()
	}
	f := n.raft.Apply(cmd, n.cfg.ApplyTimeout)
	done := make(chan error, 1)
	go func() {
		err := f.Error()
		if err == nil {
			if r, ok := f.Response().(error); ok {
				err = r
			}
		}
		done <- err
	}()
	timer := time.NewTimer(n.cfg.ApplyTimeout)
	defer timer.Stop()
	select {
	case err := <-done:
		switch {
		case err == nil:
			return nil
		case errors.Is(err, raft.ErrNotLeader), errors.Is(err, raft.ErrLeadershipTransferInProgress):
			id, addr := n.Leader()
			return &NotLeaderError{LeaderID: id, LeaderAddress: addr}
		case errors.Is(err, raft.ErrEnqueueTimeout):
			return fmt.Errorf("%w: not enqueued within %v", ErrNoQuorum, n.cfg.ApplyTimeout)
		case errors.Is(err, raft.ErrLeadershipLost):
			n.unready()
			return ErrLeadershipLost
		case errors.Is(err, raft.ErrRaftShutdown):
			n.unready()
			return ErrClosed
		}
		// Anything else (the leader's log refused the append): the
		// outcome is not known for sure.
		n.unready()
		return fmt.Errorf("%w: %v", ErrLeadershipLost, err)
	case <-timer.C:
		// The entry is in our log and may still commit. Until it is
		// applied, no later transaction may be built: its pages would
		// not include this one's.
		n.unready()
		return fmt.Errorf("%w: no quorum within %v; %s", ErrNoQuorum, n.cfg.ApplyTimeout, n.peersReport())
	}
}

// unready stops writes until a new barrier shows every entry applied, and
// rolls back open write transactions, whose pages may be stale.
func (n *Node) unready() {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return // Close rolled back everything; its wg.Wait may be under way
	}
	n.epoch++
	n.ready = false
	n.abortAll(ErrLeadershipLost, false)
	if !n.closed && n.raft.State() == raft.Leader {
		n.wg.Add(1)
		go n.barrier(n.epoch)
	}
}

// abortAll rolls back the write transactions of every connection, each on
// its own goroutine (a connection may be busy). n.mu must be held.
func (n *Node) abortAll(cause error, closing bool) {
	for _, c := range n.conns {
		n.wg.Add(1)
		go func() {
			defer n.wg.Done()
			c.Abort(cause, closing)
		}()
	}
}

// barrier makes the node ready once every entry before it is applied,
// unless leadership changed meanwhile.
func (n *Node) barrier(epoch uint64) {
	defer n.wg.Done()
	term := n.raft.CurrentTerm()
	err := n.await(n.raft.Barrier(0))
	n.mu.Lock()
	defer n.mu.Unlock()
	if err == nil && epoch == n.epoch && !n.closed && n.raft.State() == raft.Leader && n.raft.CurrentTerm() == term {
		n.ready = true
		n.term = term
		n.cfg.Logger.Info("leader ready", "node", n.cfg.ID)
	}
}

// readyTerm returns the Raft term of this node's ready leadership, or 0.
func (n *Node) readyTerm() uint64 {
	n.mu.Lock()
	defer n.mu.Unlock()
	if !n.ready {
		return 0
	}
	return n.term
}

// await waits for a Raft future, or for Close. hashicorp/raft drops some
// futures at Shutdown without answering them (a barrier handed to its FSM
// goroutine, a leadership transfer queued as it stops): Close must not
// wait for those. The goroutine that waits on such a future stays blocked;
// nothing in this module can release it.
func (n *Node) await(f raft.Future) error {
	ch := make(chan error, 1)
	go func() { ch <- f.Error() }()
	select {
	case err := <-ch:
		return err
	case <-n.done:
		return ErrClosed
	}
}

func (n *Node) watchLeadership() {
	defer n.wg.Done()
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	var lastTransfer time.Time
	for {
		select {
		case <-n.done:
			return
		case leader := <-n.notifyCh:
			n.mu.Lock()
			n.epoch++
			n.ready = false
			if leader {
				n.wg.Add(1)
				go n.barrier(n.epoch)
			} else {
				n.abortAll(ErrLeadershipLost, false)
			}
			n.mu.Unlock()
			n.cfg.Logger.Info("leadership changed", "node", n.cfg.ID, "leader", leader)
		case <-n.diskErr:
			lastTransfer = n.handOver(lastTransfer)
		case <-tick.C:
			lastTransfer = n.handOver(lastTransfer)
			n.boundLog()
		}
	}
}

// boundLog bounds the Raft log by bytes (Config.MaxLogBytes): it asks for
// a snapshot once the entries after the latest one hold half the bound,
// and lowers the number of entries kept after a snapshot so that they hold
// at most the other half.
func (n *Node) boundLog() {
	half := n.cfg.MaxLogBytes / 2
	rc := n.raft.ReloadableConfig()
	if n.snaps.Streaming() {
		// A node is receiving a snapshot: keep the log it will need
		// after it, or it would need another one when done.
		if rc.TrailingLogs != n.cfg.TrailingLogs {
			rc.TrailingLogs = n.cfg.TrailingLogs
			if err := n.raft.ReloadConfig(rc); err != nil {
				n.cfg.Logger.Warn("cannot bound the Raft log", "err", err)
			}
		}
		return
	}
	if n.fsm.LogBytesSince(n.snaps.LatestIndex()) >= half && !n.fsm.CatchingUp() && n.snapping.CompareAndSwap(false, true) {
		n.wg.Add(1)
		go func() {
			defer n.wg.Done()
			defer n.snapping.Store(false)
			n.await(n.raft.Snapshot())
		}()
	}
	if keep := n.fsm.EntriesWithin(half, n.cfg.TrailingLogs); keep != rc.TrailingLogs {
		rc.TrailingLogs = keep
		if err := n.raft.ReloadConfig(rc); err != nil {
			n.cfg.Logger.Warn("cannot bound the Raft log", "err", err)
		}
	}
}

// handOver hands leadership on if this node leads and its disk refused a
// write in the last second: a leader that cannot write cannot commit, and
// another node can. The refused write is retried until the disk takes it;
// a node elected while its disk fails hands over again on the next tick.
// At most one transfer per two seconds, so that a disk full on every node
// does not bounce leadership around the cluster. It returns when the last
// transfer started.
func (n *Node) handOver(last time.Time) time.Time {
	if time.Since(time.Unix(0, n.diskErrAt.Load())) > time.Second || time.Since(last) < 2*time.Second ||
		n.raft.State() != raft.Leader {
		return last
	}
	n.cfg.Logger.Warn("disk refuses writes: handing leadership on", "node", n.cfg.ID)
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		if err := n.await(n.raft.LeadershipTransfer()); err != nil && !errors.Is(err, ErrClosed) {
			n.cfg.Logger.Warn("leadership transfer failed", "node", n.cfg.ID, "err", err)
		}
	}()
	return time.Now()
}

// Close stops the node: open transactions are rolled back, connections
// closed (later calls on them return ErrClosed), Raft shut down and every
// file closed. The data directory is kept.
func (n *Node) Close() error {
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return nil
	}
	n.closed = true
	n.epoch++
	n.ready = false
	n.abortAll(ErrClosed, true)
	n.mu.Unlock()
	n.unregister()
	n.stopServe()
	if n.http != nil {
		n.http.close()
	}
	close(n.done)
	n.fsm.Stop()
	if s, ok := n.store.(interface{ stop() }); ok {
		s.stop() // an append retried until the disk takes it gives up
	}
	shutdown := n.raft.Shutdown()
	// Raft's shutdown waits for its RPCs; cut their connections, or one to
	// a dead peer runs to its 10 s deadline (a snapshot's, longer).
	n.trans.CloseStreams()
	n.stream.closeConns()
	err := shutdown.Error()
	n.wg.Wait()
	n.stopMetrics()
	return errors.Join(err, n.trans.Close(), n.fsm.Close(), n.store.Close(), n.lock.Close())
}

// createOnLeader asks the leader to create database name, over the client
// protocol (its hello opens the database there).
func (n *Node) createOnLeader(ctx context.Context, name string) error {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	return driver.Touch(ctx, backend{n}, name)
}

// backend is the node as the driver sees it.
type backend struct{ n *Node }

func (b backend) Database(ctx context.Context, name string) (driver.Database, error) {
	return b.n.database(ctx, name, true)
}

func (b backend) ApplyTimeout() time.Duration { return b.n.cfg.ApplyTimeout }

func (b backend) Self() (uint64, string) { return uint64(b.n.cfg.ID), b.n.Address() }

func (b backend) Leader() (uint64, string) {
	id, addr := b.n.Leader()
	return uint64(id), addr
}

func (b backend) Dial(ctx context.Context, address string) (net.Conn, error) {
	return b.n.stream.dial(ctx, address)
}

func (b backend) ReadIndex(ctx context.Context) (uint64, error) { return b.n.readIndex(ctx) }

func (b backend) AppliedIndex() uint64 { return b.n.fsm.AppliedIndex() }

func (b backend) WaitApplied(ctx context.Context, index uint64) error {
	return b.n.fsm.WaitApplied(ctx, index)
}

func (b backend) NoteWrite(index uint64) {
	for {
		old := b.n.writeFloor.Load()
		if index <= old || b.n.writeFloor.CompareAndSwap(old, index) {
			return
		}
	}
}

func (b backend) WriteFloor() uint64 { return b.n.writeFloor.Load() }

func (b backend) Metrics() *metrics.Set { return b.n.metrics }

// readIndex returns, on the ready leader, the index of the last entry it
// applied, once a heartbeat round to a quorum confirmed that it still
// leads. Every write acknowledged before the call is at or below it: the
// leader applies its own before it acknowledges them, and those of earlier
// leaders before it becomes ready. A leader that was deposed without
// knowing it (paused, partitioned) fails the round and answers
// ErrNotLeader.
func (n *Node) readIndex(ctx context.Context) (uint64, error) {
	if err := n.checkLeader(); err != nil {
		return 0, err
	}
	index := n.fsm.AppliedIndex()
	f := n.raft.VerifyLeader()
	ch := make(chan error, 1)
	go func() { ch <- f.Error() }()
	select {
	case err := <-ch:
		if err != nil {
			id, addr := n.Leader()
			if id == n.cfg.ID {
				id, addr = 0, ""
			}
			return 0, &NotLeaderError{LeaderID: id, LeaderAddress: addr}
		}
		return index, nil
	case <-ctx.Done():
		return 0, ctx.Err()
	case <-n.done:
		return 0, ErrClosed
	}
}

func (b backend) CheckLeader() error { return b.n.checkLeader() }

func (b backend) CheckOpen() error { return b.n.checkOpen() }

func (b backend) BusyTimeout() time.Duration { return b.n.cfg.BusyTimeout }

func (b backend) Track(c driver.Aborter) (uint64, func()) {
	n := b.n
	n.mu.Lock()
	defer n.mu.Unlock()
	n.nextConn++
	id := n.nextConn
	n.conns[id] = c
	return id, func() {
		n.mu.Lock()
		delete(n.conns, id)
		n.mu.Unlock()
	}
}

// Checkpoint copies database name's WAL into its file on this node and
// truncates the WAL, waiting for readers until ctx is done. Checkpoints
// are local: they change no content, so nodes need not agree on them.
func (n *Node) Checkpoint(ctx context.Context, name string) error {
	if err := n.checkOpen(); err != nil {
		return err
	}
	d := n.fsm.Database(name)
	if d == nil {
		return fmt.Errorf("%w: %s", ErrNoDatabase, name)
	}
	timeout := 10 * time.Second
	if dl, ok := ctx.Deadline(); ok {
		timeout = time.Until(dl)
	}
	if timeout <= 0 {
		return ctx.Err()
	}
	return d.CheckpointNow(timeout)
}

func (n *Node) checkOpen() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return ErrClosed
	}
	return nil
}
