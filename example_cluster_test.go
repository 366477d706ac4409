package dqlite_test

import (
	"context"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"time"

	"github.com/godqlite/dqlite"
)

// Three nodes in one process (in production, one per machine), a write on
// the leader, the leader's failure, and the next leader taking over with
// every acknowledged row.
func Example_failover() {
	base, err := os.MkdirTemp("", "dqlite-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(base)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// Ports are picked at start, so the cluster is bootstrapped once every
	// node listens. With fixed addresses, Config.Cluster does the same.
	var nodes []*dqlite.Node
	var peers []dqlite.Peer
	for id := dqlite.NodeID(1); id <= 3; id++ {
		n, err := dqlite.New(dqlite.Config{
			ID:      id,
			Address: "127.0.0.1:0",
			Dir:     filepath.Join(base, fmt.Sprint("node", id)),
		})
		if err != nil {
			log.Fatal(err)
		}
		defer n.Close()
		nodes = append(nodes, n)
		peers = append(peers, dqlite.Peer{ID: id, Address: n.Address()})
	}
	for _, n := range nodes {
		if err := n.Bootstrap(peers); err != nil {
			log.Fatal(err)
		}
	}

	leader := waitLeader(ctx, nodes)
	db, err := leader.Open(ctx, "test.db")
	if err != nil {
		log.Fatal(err)
	}
	if _, err := db.ExecContext(ctx, `CREATE TABLE t (id INTEGER PRIMARY KEY); INSERT INTO t VALUES (1)`); err != nil {
		log.Fatal(err)
	}
	db.Close()

	// The leader goes away; the other two elect one of themselves.
	leader.Close()
	var rest []*dqlite.Node
	for _, n := range nodes {
		if n != leader {
			rest = append(rest, n)
		}
	}
	next := waitLeader(ctx, rest)
	db, err = next.Open(ctx, "test.db")
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	if _, err := db.ExecContext(ctx, `INSERT INTO t VALUES (2)`); err != nil {
		log.Fatal(err)
	}
	var n int
	if err := db.QueryRowContext(ctx, `SELECT count(*) FROM t`).Scan(&n); err != nil {
		log.Fatal(err)
	}
	fmt.Println("new leader elected:", next != leader)
	fmt.Println("rows:", n)
	// Output:
	// new leader elected: true
	// rows: 2
}

// A cluster grows by one node, which receives the databases from the
// leader, and shrinks again.
func ExampleNode_AddVoter() {
	base, err := os.MkdirTemp("", "dqlite-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(base)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	first, err := dqlite.New(dqlite.Config{ID: 1, Address: "127.0.0.1:0", Dir: filepath.Join(base, "node1")})
	if err != nil {
		log.Fatal(err)
	}
	defer first.Close()
	if err := first.Bootstrap([]dqlite.Peer{{ID: 1, Address: first.Address()}}); err != nil {
		log.Fatal(err)
	}
	db, err := first.Open(ctx, "test.db")
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	if _, err := db.ExecContext(ctx, `CREATE TABLE t (v); INSERT INTO t VALUES ('before the join')`); err != nil {
		log.Fatal(err)
	}

	// A new node starts with an empty directory and no Config.Cluster;
	// the leader adds it.
	second, err := dqlite.New(dqlite.Config{ID: 2, Address: "127.0.0.1:0", Dir: filepath.Join(base, "node2")})
	if err != nil {
		log.Fatal(err)
	}
	defer second.Close()
	if err := first.AddVoter(ctx, 2, second.Address()); err != nil {
		log.Fatal(err)
	}
	members, err := first.Members(ctx)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("members:", len(members))

	// Its copy of the database receives what was written before it
	// joined; like every follower's, it may lag a little behind.
	copy2, err := second.Open(ctx, "test.db")
	if err != nil {
		log.Fatal(err)
	}
	defer copy2.Close()
	var v string
	for copy2.QueryRowContext(ctx, `SELECT v FROM t`).Scan(&v) != nil {
		if ctx.Err() != nil {
			log.Fatal(ctx.Err())
		}
		time.Sleep(10 * time.Millisecond)
	}
	fmt.Println("node 2 reads:", v)

	if err := first.RemoveNode(ctx, 2); err != nil {
		log.Fatal(err)
	}
	members, err = first.Members(ctx)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("members:", len(members))
	// Output:
	// members: 2
	// node 2 reads: before the join
	// members: 1
}

// waitLeader returns the node among nodes that leads, once one does.
func waitLeader(ctx context.Context, nodes []*dqlite.Node) *dqlite.Node {
	for ctx.Err() == nil {
		for _, n := range nodes {
			if n.IsLeader() {
				return n
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	log.Fatal("no leader: ", ctx.Err())
	return nil
}
