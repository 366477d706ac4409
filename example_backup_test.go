package dqlite_test

import (
	"bytes"
	"context"
	"fmt"
	"log"
	"os"
	"time"

	"github.com/godqlite/dqlite"
)

// oneNode starts a one-node cluster in a temporary directory.
func oneNode() (node *dqlite.Node, cleanup func()) {
	dir, err := os.MkdirTemp("", "dqlite-example")
	if err != nil {
		log.Fatal(err)
	}
	node, err = dqlite.New(dqlite.Config{ID: 1, Address: "127.0.0.1:0", Dir: dir})
	if err != nil {
		log.Fatal(err)
	}
	if err := node.Bootstrap([]dqlite.Peer{{ID: 1, Address: node.Address()}}); err != nil {
		log.Fatal(err)
	}
	return node, func() { node.Close(); os.RemoveAll(dir) }
}

// A backup is a plain SQLite file; restoring it into another cluster's
// database gives the same content, and a dump is SQL text.
func ExampleNode_Backup() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	a, stopA := oneNode()
	defer stopA()
	db, err := a.Open(ctx, "app.db")
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	if _, err := db.ExecContext(ctx, `CREATE TABLE t (k TEXT PRIMARY KEY, v); INSERT INTO t VALUES ('a', 1), ('b', x'ff')`); err != nil {
		log.Fatal(err)
	}

	var backup bytes.Buffer
	if _, err := a.Backup(ctx, "app.db", &backup); err != nil { // any node, while writes go on
		log.Fatal(err)
	}
	fmt.Printf("%q\n", backup.Bytes()[:15])

	b, stopB := oneNode() // another cluster
	defer stopB()
	if err := b.Restore(ctx, "app.db", &backup); err != nil { // one replicated transaction
		log.Fatal(err)
	}
	if err := b.Dump(ctx, "app.db", os.Stdout); err != nil {
		log.Fatal(err)
	}
	// Output:
	// "SQLite format 3"
	// PRAGMA foreign_keys=OFF;
	// BEGIN TRANSACTION;
	// CREATE TABLE t (k TEXT PRIMARY KEY, v);
	// INSERT INTO "t"(rowid, "k", "v") VALUES(1,'a',1);
	// INSERT INTO "t"(rowid, "k", "v") VALUES(2,'b',X'FF');
	// COMMIT;
}

// What a node says of itself.
func ExampleNode_Status() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	node, stop := oneNode()
	defer stop()
	db, err := node.Open(ctx, "app.db")
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	if _, err := db.ExecContext(ctx, `CREATE TABLE t (x); INSERT INTO t VALUES (1)`); err != nil {
		log.Fatal(err)
	}
	st := node.Status()
	fmt.Println(st.Role, st.State, st.Ready, len(st.Members), st.Lag)
	for _, d := range st.Databases {
		fmt.Println(d.Name, d.WALFrames > 0, d.AppliedIndex > 0)
	}
	// Output:
	// voter Leader true 1 0
	// app.db true true
}
