package main

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/godqlite/dqlite"
)

// verify reopens every data directory in this process and checks what the
// demo promises. It returns the exit code.
func (s *supervisor) verify() int {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var failures []error
	failf := func(format string, a ...any) { failures = append(failures, fmt.Errorf(format, a...)) }

	nodes := make([]*dqlite.Node, s.o.nodes)
	defer func() {
		for _, n := range nodes {
			if n != nil {
				n.Close()
			}
		}
	}()
	for i := range nodes {
		// Starting a child with the listener's descriptor, and the child
		// taking it over, flip the blocking mode that every copy of it
		// shares: a listener left blocking cannot be closed while its
		// accept waits. Make it non-blocking before the node accepts.
		if err := nonBlocking(s.listeners[i]); err != nil {
			s.logf("FAILED: listener of node %d: %v", i+1, err)
			return 1
		}
		cfg := demoConfig(i+1, s.listeners[i], s.dirs[i], nil)
		n, err := dqlite.New(cfg)
		if err != nil {
			s.logf("FAILED: reopen %s: %v", s.dirs[i], err)
			return 1
		}
		nodes[i] = n
	}
	leader, err := waitLeader(ctx, nodes)
	if err != nil {
		s.logf("FAILED: no leader after reopening: %v", err)
		return 1
	}
	dbs := make([]*sql.DB, len(nodes))
	for i, n := range nodes {
		if dbs[i], err = n.Open(ctx, "test.db"); err != nil {
			s.logf("FAILED: open test.db on node %d: %v", i+1, err)
			return 1
		}
		defer dbs[i].Close()
	}
	// A marker written now reaches a node after everything before it.
	if _, err := dbs[leader].ExecContext(ctx, `CREATE TABLE IF NOT EXISTS verified (at TEXT); INSERT INTO verified VALUES (datetime('now'))`); err != nil {
		s.logf("FAILED: write the marker: %v", err)
		return 1
	}
	var rows []map[rowKey]bool
	for i, db := range dbs {
		if err := waitMarker(ctx, db); err != nil {
			s.logf("FAILED: node %d did not catch up: %v", i+1, err)
			return 1
		}
		present, err := readRows(ctx, db)
		if err != nil {
			s.logf("FAILED: read node %d: %v", i+1, err)
			return 1
		}
		rows = append(rows, present)
		var total, sum int
		db.QueryRowContext(ctx, `SELECT count(*), (SELECT coalesce(sum(rows), 0) FROM stats) FROM test`).Scan(&total, &sum)
		if total != sum {
			failf("node %d: %d rows but the stats table counts %d: a transaction was applied in part", i+1, total, sum)
		}
		var ok string
		if err := db.QueryRowContext(ctx, `PRAGMA integrity_check`).Scan(&ok); err != nil || ok != "ok" {
			failf("node %d: integrity_check: %q %v", i+1, ok, err)
		}
	}
	lost := 0
	for k := range s.acked {
		if !rows[0][k] {
			lost++
		}
	}
	ambiguous := 0
	for k := range rows[0] {
		if !s.acked[k] {
			ambiguous++
		}
	}
	if lost > 0 {
		failf("%d acknowledged rows are missing", lost)
	}
	for i := 1; i < len(rows); i++ {
		if !sameKeys(rows[0], rows[i]) {
			failf("nodes 1 and %d hold different rows (%d and %d)", i+1, len(rows[0]), len(rows[i]))
		}
	}
	var files [][]byte
	for i, n := range nodes {
		if err := n.Checkpoint(ctx, "test.db"); err != nil {
			failf("node %d: checkpoint: %v", i+1, err)
			continue
		}
		b, err := os.ReadFile(filepath.Join(s.dirs[i], "test.db"))
		if err != nil {
			failf("node %d: %v", i+1, err)
			continue
		}
		files = append(files, b)
	}
	for i := 1; i < len(files); i++ {
		if !bytes.Equal(files[0], files[i]) {
			failf("the database files of nodes 1 and %d differ", i+1)
		}
	}
	if len(s.acked) == 0 {
		failf("no insert was acknowledged")
	}
	if len(failures) > 0 {
		s.logf("FAILED:\n%v", errors.Join(failures...))
	}
	fmt.Fprintf(s.out, "converged: nodes=%d acknowledged=%d present=%d lost=%d ambiguous=%d leader_changes=%d kills=%d\n",
		len(nodes), len(s.acked), len(rows[0]), lost, ambiguous, s.leaderChanges, s.kills)
	if len(failures) > 0 {
		return 1
	}
	return 0
}

func waitLeader(ctx context.Context, nodes []*dqlite.Node) (int, error) {
	for {
		for i, n := range nodes {
			if n.IsLeader() {
				return i, nil
			}
		}
		select {
		case <-ctx.Done():
			return -1, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func waitMarker(ctx context.Context, db *sql.DB) error {
	for {
		var n int
		err := db.QueryRowContext(ctx, `SELECT count(*) FROM verified`).Scan(&n)
		if err == nil && n > 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (last error: %v)", ctx.Err(), err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func readRows(ctx context.Context, db *sql.DB) (map[rowKey]bool, error) {
	rows, err := db.QueryContext(ctx, `SELECT node, run, n FROM test`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	got := map[rowKey]bool{}
	for rows.Next() {
		var k rowKey
		if err := rows.Scan(&k.node, &k.run, &k.n); err != nil {
			return nil, err
		}
		got[k] = true
	}
	return got, rows.Err()
}

func sameKeys(a, b map[rowKey]bool) bool {
	if len(a) != len(b) {
		return false
	}
	for k := range a {
		if !b[k] {
			return false
		}
	}
	return true
}
