package dqlite_test

import (
	"context"
	"database/sql"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"time"

	"github.com/godqlite/dqlite"
	"github.com/godqlite/dqlite/driver"
)

// Every node's *sql.DB writes: a follower runs write transactions on the
// leader. What a node wrote, it reads back at once; a commit index
// carried to another node makes that node's read wait for it; a
// linearizable read sees every write acknowledged before it began. A
// program that is no member of the cluster uses it through a data source
// name that lists some of its nodes.
func Example_anyNode() {
	base, err := os.MkdirTemp("", "dqlite-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(base)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var nodes []*dqlite.Node
	var peers []dqlite.Peer
	for id := dqlite.NodeID(1); id <= 3; id++ {
		n, err := dqlite.New(dqlite.Config{ID: id, Address: "127.0.0.1:0", Dir: filepath.Join(base, fmt.Sprint("node", id))})
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
	var followers []*dqlite.Node
	for _, n := range nodes {
		if n != leader {
			followers = append(followers, n)
		}
	}

	// A follower's *sql.DB: the transaction runs on the leader.
	db, err := followers[0].Open(ctx, "app.db")
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	if _, err := db.ExecContext(ctx, `CREATE TABLE kv (k TEXT PRIMARY KEY, v TEXT)`); err != nil {
		log.Fatal(err)
	}
	var index uint64 // the commit's Raft index: a token for other nodes
	tx, err := db.BeginTx(dqlite.WithCommitIndex(ctx, &index), nil)
	if err != nil {
		log.Fatal(err)
	}
	if _, err := tx.Exec(`INSERT INTO kv VALUES ('greeting', 'hello')`); err != nil {
		log.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		log.Fatal(err)
	}
	var v string
	if err := db.QueryRowContext(ctx, `SELECT v FROM kv WHERE k = 'greeting'`).Scan(&v); err != nil {
		log.Fatal(err)
	}
	fmt.Println("read back on the same node:", v)

	// The other follower waits for the token before it reads.
	other, err := followers[1].Open(ctx, "app.db")
	if err != nil {
		log.Fatal(err)
	}
	defer other.Close()
	if err := other.QueryRowContext(dqlite.WithAfter(ctx, index), `SELECT v FROM kv WHERE k = 'greeting'`).Scan(&v); err != nil {
		log.Fatal(err)
	}
	fmt.Println("read on another node after the token:", v)

	// A remote client writes; a linearizable read anywhere sees it.
	remote, err := sql.Open(driver.Name, fmt.Sprintf("dqlite://%s,%s/app.db", followers[0].Address(), followers[1].Address()))
	if err != nil {
		log.Fatal(err)
	}
	defer remote.Close()
	if _, err := remote.ExecContext(ctx, `UPDATE kv SET v = 'hello again' WHERE k = 'greeting'`); err != nil {
		log.Fatal(err)
	}
	if err := other.QueryRowContext(dqlite.WithReadLevel(ctx, dqlite.ReadLinearizable), `SELECT v FROM kv WHERE k = 'greeting'`).Scan(&v); err != nil {
		log.Fatal(err)
	}
	fmt.Println("linearizable read:", v)
	// Output:
	// read back on the same node: hello
	// read on another node after the token: hello
	// linearizable read: hello again
}
