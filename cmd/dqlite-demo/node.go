package main

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/godqlite/dqlite"
)

// nodeFlag, as the first argument, runs the binary as one demo node.
const nodeFlag = "-node"

// event is one line a node writes to its standard output.
type event struct {
	Type   string `json:"t"`
	Node   int    `json:"node"`
	Run    int    `json:"run,omitempty"`
	N      int64  `json:"n,omitempty"`
	Leader int    `json:"leader,omitempty"`
	Text   string `json:"text,omitempty"`
}

type emitter struct {
	mu  sync.Mutex
	enc *json.Encoder
}

func (e *emitter) emit(ev event) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.enc.Encode(ev)
}

// demoConfig is the node configuration every demo node uses: small
// snapshot thresholds, so that snapshots show up in a one-minute run.
func demoConfig(id int, l net.Listener, dir string, peers []dqlite.Peer) dqlite.Config {
	return dqlite.Config{
		ID: dqlite.NodeID(id), Address: l.Addr().String(), Listener: l, Dir: dir, Cluster: peers,
		HeartbeatTimeout: 500 * time.Millisecond, ElectionTimeout: 500 * time.Millisecond,
		LeaderLeaseTimeout: 250 * time.Millisecond, ApplyTimeout: 5 * time.Second,
		SnapshotThreshold: 1024, SnapshotInterval: 2 * time.Second, TrailingLogs: 256,
	}
}

func parsePeers(s string) ([]dqlite.Peer, error) {
	var peers []dqlite.Peer
	for _, p := range strings.Split(s, ",") {
		id, addr, ok := strings.Cut(p, "=")
		n, err := strconv.Atoi(id)
		if !ok || err != nil {
			return nil, fmt.Errorf("bad peer %q", p)
		}
		peers = append(peers, dqlite.Peer{ID: dqlite.NodeID(n), Address: addr})
	}
	return peers, nil
}

// runNode is a demo node. Its Raft listener is file descriptor 3, and its
// HTTP API's 4, opened by the supervisor, so that a restarted node listens
// on the same ports.
func runNode(args []string, stdout io.Writer) int {
	fs := flag.NewFlagSet("node", flag.ContinueOnError)
	id := fs.Int("id", 0, "node ID")
	run := fs.Int("run", 0, "how many times this node started before")
	dir := fs.String("dir", "", "data directory")
	peerList := fs.String("peers", "", "id=address,...")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	out := &emitter{enc: json.NewEncoder(stdout)}
	fail := func(err error) int {
		out.emit(event{Type: "fatal", Node: *id, Text: err.Error()})
		return 1
	}
	peers, err := parsePeers(*peerList)
	if err != nil {
		return fail(err)
	}
	l, err := net.FileListener(os.NewFile(3, "raft-listener"))
	if err != nil {
		return fail(fmt.Errorf("listener: %w", err))
	}
	hl, err := net.FileListener(os.NewFile(4, "http-listener"))
	if err != nil {
		return fail(fmt.Errorf("http listener: %w", err))
	}
	cfg := demoConfig(*id, l, *dir, peers)
	cfg.HTTPListener = hl
	node, err := dqlite.New(cfg)
	if err != nil {
		return fail(err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		watch(ctx, node, *id, out)
	}()
	err = insertLoop(ctx, node, *id, *run, out)
	stop()
	wg.Wait()
	if cerr := node.Close(); cerr != nil && err == nil {
		err = cerr
	}
	if err != nil && ctx.Err() == nil {
		return fail(err)
	}
	return 0
}

// watch reports leadership and new snapshots.
func watch(ctx context.Context, node *dqlite.Node, id int, out *emitter) {
	last := node.SnapshotIndex() // snapshots taken before this run are not news
	leader := false
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if l := node.IsLeader(); l != leader {
			leader = l
			if l {
				out.emit(event{Type: "leader", Node: id})
			}
		}
		if i := node.SnapshotIndex(); i != last {
			last = i
			out.emit(event{Type: "snapshot", Node: id, Text: fmt.Sprintf("index %d", i)})
		}
	}
}

const schema = `CREATE TABLE IF NOT EXISTS test (node INT, run INT, n INT, ts TEXT, r INT, PRIMARY KEY (node, run, n));
CREATE TABLE IF NOT EXISTS stats (node INT PRIMARY KEY, rows INT)`

// insertLoop inserts rows until ctx is done. A row is (node, run, n):
// n grows with every attempt, so a row whose outcome was unknown is never
// written twice.
func insertLoop(ctx context.Context, node *dqlite.Node, id, run int, out *emitter) error {
	db, err := node.Open(ctx, "test.db")
	if err != nil {
		return err
	}
	defer db.Close()
	lastLeader := -1
	for n := int64(1); ctx.Err() == nil; n++ {
		err := insert(ctx, db, id, run, n)
		var nl *dqlite.NotLeaderError
		switch {
		case err == nil:
			out.emit(event{Type: "ack", Node: id, Run: run, N: n})
		case errors.As(err, &nl), errors.Is(err, dqlite.ErrNoLeader):
			// No leader to forward the write to (an election is under
			// way): nothing ran. Say whom this node believes leads, then
			// wait.
			if l, _ := node.Leader(); int(l) != lastLeader {
				lastLeader = int(l)
				out.emit(event{Type: "redirect", Node: id, Leader: lastLeader})
			}
			sleep(ctx, 200*time.Millisecond)
		case ctx.Err() != nil:
		default:
			out.emit(event{Type: "error", Node: id, Run: run, N: n, Text: err.Error()})
			sleep(ctx, 100*time.Millisecond)
		}
	}
	return nil
}

func insert(ctx context.Context, db *sql.DB, id, run int, n int64) error {
	if n == 1 {
		if _, err := db.ExecContext(ctx, schema); err != nil {
			return err
		}
	}
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	if _, err := tx.ExecContext(ctx, `INSERT INTO test VALUES (?, ?, ?, datetime('now'), random())`, id, run, n); err != nil {
		if strings.Contains(err.Error(), "no such table") {
			db.ExecContext(ctx, schema)
		}
		return err
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO stats VALUES (?, 1) ON CONFLICT (node) DO UPDATE SET rows = rows + 1`, id); err != nil {
		return err
	}
	return tx.Commit()
}

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}
