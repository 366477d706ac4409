package dqlite_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"time"

	"github.com/godqlite/dqlite"
)

// A one-node cluster: the same code runs on every node of a real one.
func Example() {
	dir, err := os.MkdirTemp("", "dqlite-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)

	node, err := dqlite.New(dqlite.Config{ID: 1, Address: "127.0.0.1:0", Dir: dir})
	if err != nil {
		log.Fatal(err)
	}
	defer node.Close()
	if err := node.Bootstrap([]dqlite.Peer{{ID: 1, Address: node.Address()}}); err != nil {
		log.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	db, err := node.Open(ctx, "test.db") // waits for a leader, creates the database
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()

	if _, err := db.ExecContext(ctx, `CREATE TABLE t (id INTEGER PRIMARY KEY, at TEXT, r INT)`); err != nil {
		log.Fatal(err)
	}
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		log.Fatal(err)
	}
	for i := 1; i <= 3; i++ {
		if _, err := tx.ExecContext(ctx, `INSERT INTO t VALUES (?, datetime('now'), random())`, i); err != nil {
			log.Fatal(err)
		}
	}
	if err := tx.Commit(); err != nil { // returns once a quorum has the frames
		log.Fatal(err)
	}

	var n int
	if err := db.QueryRowContext(ctx, `SELECT count(*) FROM t`).Scan(&n); err != nil {
		log.Fatal(err)
	}
	fmt.Println("rows:", n)
	// Output: rows: 3
}

// Writes on a node that is not the leader fail before they run, with an
// error that says where the leader is.
func ExampleNotLeaderError() {
	err := error(&dqlite.NotLeaderError{LeaderID: 2, LeaderAddress: "127.0.0.1:9002"})
	var nl *dqlite.NotLeaderError
	if errors.Is(err, dqlite.ErrNotLeader) && errors.As(err, &nl) {
		fmt.Printf("send the write to node %d at %s\n", nl.LeaderID, nl.LeaderAddress)
	}
	// Output: send the write to node 2 at 127.0.0.1:9002
}
