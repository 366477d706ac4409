package dqlite_test

import (
	"context"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/godqlite/dqlite"
)

// startOne starts a one-node cluster with cfg's extra settings.
func startOne(cfg dqlite.Config) (*dqlite.Node, func()) {
	dir, err := os.MkdirTemp("", "dqlite-example")
	if err != nil {
		log.Fatal(err)
	}
	cfg.ID, cfg.Address, cfg.Dir = 1, "127.0.0.1:0", dir
	node, err := dqlite.New(cfg)
	if err != nil {
		log.Fatal(err)
	}
	if err := node.Bootstrap([]dqlite.Peer{{ID: 1, Address: node.Address()}}); err != nil {
		log.Fatal(err)
	}
	return node, func() { node.Close(); os.RemoveAll(dir) }
}

// Subscribe to a database's committed transactions: each comes with its
// Raft index (keep the last one handled, to resume from it), the tables
// it changed, and the rowids.
func ExampleNode_Subscribe() {
	node, stop := startOne(dqlite.Config{})
	defer stop()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	db, err := node.Open(ctx, "test.db")
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	if _, err := db.ExecContext(ctx, `CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)`); err != nil {
		log.Fatal(err)
	}
	// From now on: after the index the node has applied.
	sub, err := node.Subscribe("test.db", node.Status().AppliedIndex, true)
	if err != nil {
		log.Fatal(err)
	}
	defer sub.Close()
	if _, err := db.ExecContext(ctx, `INSERT INTO t (id, v) VALUES (1, 'a'), (2, 'b')`); err != nil {
		log.Fatal(err)
	}
	if _, err := db.ExecContext(ctx, `UPDATE t SET v = 'c' WHERE id = 2`); err != nil {
		log.Fatal(err)
	}
	for range 2 {
		c, err := sub.Next(ctx)
		if err != nil {
			log.Fatal(err)
		}
		for _, t := range c.Tables {
			fmt.Printf("%s: inserted %v, updated %v, rows %v\n", t.Table, t.Inserted, t.Updated, t.Keys)
		}
	}
	// Output:
	// t: inserted true, updated false, rows [1 2]
	// t: inserted false, updated true, rows [2]
}

// The HTTP API: statements and queries as JSON, from any language.
func ExampleConfig_httpAddress() {
	node, stop := startOne(dqlite.Config{HTTPAddress: "127.0.0.1:0"})
	defer stop()
	base := "http://" + node.HTTPAddress()
	post := func(path, body string) string {
		resp, err := http.Post(base+path, "application/json", strings.NewReader(body))
		if err != nil {
			log.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
	post("/db/execute?db=kv.db", `["CREATE TABLE kv (k TEXT PRIMARY KEY, v)"]`)
	post("/db/execute?db=kv.db&transaction", `[["INSERT INTO kv VALUES (?, ?)", "a", 1], ["INSERT INTO kv VALUES (:k, :v)", {"k": "b", "v": 2.5}]]`)
	out := post("/db/query?db=kv.db&level=linearizable", `["SELECT k, v FROM kv ORDER BY k"]`)
	fmt.Println(out[:strings.Index(out, `,"time"`)])
	// Output:
	// {"results":[{"columns":["k","v"],"types":["text",""],"values":[["a",1],["b",2.5]]}]
}

// Metrics go to the application's Prometheus registry.
func ExampleConfig_metrics() {
	reg := prometheus.NewRegistry()
	node, stop := startOne(dqlite.Config{Metrics: reg})
	defer stop()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	db, err := node.Open(ctx, "test.db")
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	if _, err := db.ExecContext(ctx, `CREATE TABLE t (x)`); err != nil {
		log.Fatal(err)
	}
	families, err := reg.Gather()
	if err != nil {
		log.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() == "dqlite_commits_total" {
			fmt.Println(f.GetName(), f.GetMetric()[0].GetCounter().GetValue())
		}
	}
	// Output:
	// dqlite_commits_total 1
}
