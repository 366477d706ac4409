package workload

import (
	"context"
	"database/sql"
	"fmt"
	"net"
)

// Schema is the one table every system gets.
const Schema = `CREATE TABLE IF NOT EXISTS bench (id INTEGER PRIMARY KEY, v TEXT NOT NULL)`

// Value is what every row holds.
const Value = "a short row of text, the same for every system"

// SQLOps runs the workloads through database/sql. retry says which errors
// mean "try again" for this system. linearizable, if not nil, gives a
// read's context the system's linearizable read level; without it the
// system has no LinRead.
func SQLOps(db *sql.DB, retry func(error) bool, linearizable func(context.Context) context.Context) Ops {
	wrap := func(err error) error {
		if err != nil && retry(err) {
			return fmt.Errorf("%w: %v", ErrRetry, err)
		}
		return err
	}
	insert := func(ctx context.Context, ids []int64) error {
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			return wrap(err)
		}
		defer tx.Rollback()
		for _, id := range ids {
			if _, err := tx.ExecContext(ctx, `INSERT INTO bench (id, v) VALUES (?, ?)`, id, Value); err != nil {
				return wrap(err)
			}
		}
		return wrap(tx.Commit())
	}
	read := func(ctx context.Context, id int64) error {
		var v string
		return wrap(db.QueryRowContext(ctx, `SELECT v FROM bench WHERE id = ?`, id).Scan(&v))
	}
	ops := Ops{
		Insert: func(ctx context.Context, id int64) error { return insert(ctx, []int64{id}) },
		Batch:  insert,
		Read:   read,
	}
	if linearizable != nil {
		ops.LinRead = func(ctx context.Context, id int64) error { return read(linearizable(ctx), id) }
	}
	return ops
}

// MaxID returns the largest row ID in the table.
func MaxID(db *sql.DB) func(ctx context.Context) (int64, error) {
	return func(ctx context.Context) (int64, error) {
		var id int64
		err := db.QueryRowContext(ctx, `SELECT coalesce(max(id), 0) FROM bench`).Scan(&id)
		return id, err
	}
}

// FreePorts returns n loopback addresses that were free a moment ago, for
// peers that must be told their ports.
func FreePorts(n int) ([]string, error) {
	var addrs []string
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		defer l.Close()
		addrs = append(addrs, l.Addr().String())
	}
	return addrs, nil
}
