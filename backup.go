package dqlite

import (
	"context"
	"database/sql"
	"fmt"
	"io"
	"os"

	"github.com/ncruces/go-sqlite3"

	sqldump "github.com/godqlite/dqlite/internal/dump"
)

// Backup writes to w a copy of database name, as it is on this node, as
// a plain SQLite file (rollback journal mode, no -wal file needed) that
// sqlite3 and any SQLite library open. It works on any node, while writes
// go on: the copy is one read snapshot, of committed transactions only.
// It returns a Raft index at or after which the snapshot was taken: the
// copy holds every transaction committed at or before it, and perhaps a
// few later ones.
//
// The copy is made with SQLite's online backup into a temporary file
// (in os.TempDir), then streamed to w: memory use does not depend on the
// database's size, and the temporary file needs as much disk space as
// the database.
func (n *Node) Backup(ctx context.Context, name string, w io.Writer) (index uint64, err error) {
	db, err := n.existing(ctx, name)
	if err != nil {
		return 0, err
	}
	defer db.Close()
	tmp, err := os.CreateTemp("", "dqlite-backup-*.db")
	if err != nil {
		return 0, fmt.Errorf("dqlite: backup: %w", err)
	}
	path := tmp.Name()
	tmp.Close()
	defer os.Remove(path)
	defer os.Remove(path + "-journal")

	conn, err := db.Conn(ctx)
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	index = n.fsm.AppliedIndex() // applied, so in the snapshot taken next
	tx, err := conn.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return 0, err
	}
	defer tx.Rollback()
	err = conn.Raw(func(dc any) error {
		raw := dc.(interface{ Raw() *sqlite3.Conn }).Raw()
		b, err := raw.BackupInit("main", sqldump.FileURI(path))
		if err != nil {
			return err
		}
		for {
			if err := ctx.Err(); err != nil {
				b.Close()
				return err
			}
			done, err := b.Step(1024)
			if err != nil {
				b.Close()
				return err
			}
			if done {
				return b.Close()
			}
		}
	})
	if err != nil {
		return 0, fmt.Errorf("dqlite: backup of %s: %w", name, err)
	}
	tx.Rollback()
	// The pages came from a WAL database: say it is a rollback journal
	// one, so that opening the copy creates no -wal file.
	c, err := sqlite3.Open(sqldump.FileURI(path))
	if err == nil {
		err = c.Exec(`PRAGMA journal_mode=DELETE`)
		c.Close()
	}
	if err != nil {
		return 0, fmt.Errorf("dqlite: backup of %s: %w", name, err)
	}
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	if _, err := io.Copy(w, f); err != nil {
		return 0, fmt.Errorf("dqlite: backup of %s: %w", name, err)
	}
	return index, nil
}

// Dump writes database name, as it is on this node, as SQL text that
// sqlite3 loads into an empty database (as its shell's .dump does): one
// read snapshot of committed transactions, streamed.
func (n *Node) Dump(ctx context.Context, name string, w io.Writer) error {
	db, err := n.existing(ctx, name)
	if err != nil {
		return err
	}
	defer db.Close()
	tx, err := db.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return err
	}
	defer tx.Rollback()
	return sqldump.Write(ctx, sqldump.SQL(tx), w)
}

// Restore replaces the content of database name, creating it if need be,
// with that of the SQLite database file r reads (a Backup, or any SQLite
// file): every table, index, view and trigger of the database is dropped
// and the file's are created, with their rows, sqlite_sequence,
// sqlite_stat1, user_version and application_id, in one write transaction.
// It commits like any other, so readers on every node see the old content
// or the new, never a mix, and a failure leaves the old content. It works
// on any node (a follower forwards the transaction to the leader).
//
// The file is spooled to a temporary file first. The transaction carries
// the whole content, so it is bounded by Config.MaxTxSize (ErrTxTooLarge);
// for a larger database, raise MaxTxSize (see its cost there).
func (n *Node) Restore(ctx context.Context, name string, r io.Reader) error {
	tmp, err := os.CreateTemp("", "dqlite-restore-*.db")
	if err != nil {
		return fmt.Errorf("dqlite: restore: %w", err)
	}
	path := tmp.Name()
	defer os.Remove(path)
	defer os.Remove(path + "-shm") // of a WAL-mode file, read
	_, err = io.Copy(tmp, r)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("dqlite: restore: %w", err)
	}
	src, err := sqldump.OpenFile(path)
	if err != nil {
		return fmt.Errorf("dqlite: restore of %s: what to restore is %w", name, err)
	}
	defer src.Close()
	// The content goes through one transaction: refuse at once what
	// would surely exceed MaxTxSize, rather than after writing it all.
	var pages, free, size int64
	err = sqldump.Raw(src).Rows(ctx, `SELECT (SELECT * FROM pragma_page_count), (SELECT * FROM pragma_freelist_count), (SELECT * FROM pragma_page_size)`, nil,
		func(c []string) error {
			_, err := fmt.Sscan(c[0]+" "+c[1]+" "+c[2], &pages, &free, &size)
			return err
		})
	if err != nil {
		return fmt.Errorf("dqlite: restore of %s: %w", name, err)
	}
	if used := (pages - free) * size; used > n.cfg.MaxTxSize {
		return fmt.Errorf("%w: restoring %s takes one transaction of about %d bytes of pages, more than Config.MaxTxSize (%d)",
			ErrTxTooLarge, name, used, n.cfg.MaxTxSize)
	}
	db, err := n.Open(ctx, name)
	if err != nil {
		return err
	}
	defer db.Close()
	return restoreInto(ctx, src, db)
}

// restoreInto replaces db's content with src's in one transaction.
func restoreInto(ctx context.Context, src *sqlite3.Conn, db *sql.DB) error {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	if err := sqldump.Replace(ctx, sqldump.Raw(src), tx); err != nil {
		return fmt.Errorf("dqlite: restore: %w", err)
	}
	return tx.Commit()
}

// existing returns a *sql.DB of database name, which must exist.
func (n *Node) existing(ctx context.Context, name string) (*sql.DB, error) {
	if err := n.checkOpen(); err != nil {
		return nil, err
	}
	if err := n.fsm.CheckName(name); err != nil {
		return nil, err
	}
	if n.fsm.Database(name) == nil {
		return nil, fmt.Errorf("%w: %s", ErrNoDatabase, name)
	}
	return n.Open(ctx, name)
}
