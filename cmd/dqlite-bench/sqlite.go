package main

import (
	"context"
	"database/sql"
	"errors"
	"path/filepath"

	"github.com/ncruces/go-sqlite3"
	_ "github.com/ncruces/go-sqlite3/driver"

	"github.com/godqlite/dqlite/cmd/dqlite-bench/workload"
)

// localSQLite is plain SQLite in WAL mode through the same binding: the
// ceiling every replicated system is measured against.
type localSQLite struct {
	sync string // FULL or NORMAL
	db   *sql.DB
}

func (s *localSQLite) Name() string { return "sqlite-" + s.sync }

func (s *localSQLite) Durability() string {
	if s.sync == "full" {
		return "one machine; WAL fsynced on every commit"
	}
	return "one machine; WAL not fsynced per commit (a power loss may drop the last commits)"
}

func (s *localSQLite) Start(ctx context.Context, dir string) (workload.Ops, error) {
	db, err := sql.Open("sqlite3", "file:"+filepath.Join(dir, "bench.db")+
		"?_pragma=journal_mode(wal)&_pragma=synchronous("+s.sync+")&_pragma=busy_timeout(10000)")
	if err != nil {
		return workload.Ops{}, err
	}
	s.db = db
	if _, err := db.ExecContext(ctx, workload.Schema); err != nil {
		return workload.Ops{}, err
	}
	// One copy: every read of it is linearizable.
	same := func(ctx context.Context) context.Context { return ctx }
	return workload.SQLOps(db, func(err error) bool { return errors.Is(err, sqlite3.BUSY) }, same), nil
}

func (s *localSQLite) Stop() error { return s.db.Close() }
