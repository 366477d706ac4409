package driver

import (
	"errors"
	"fmt"
	"strings"

	"github.com/ncruces/go-sqlite3"

	"github.com/godqlite/dqlite/internal/errs"
)

var errReadOnlyTx = errors.New("dqlite: write in a read-only transaction")

// txRolledBack is the error of a transaction rolled back under the
// application because of err: its later statements and its end return it.
func txRolledBack(err error) error {
	return fmt.Errorf("dqlite: the transaction was rolled back: %w", err)
}

var errWriteRowsOpen = errors.New("dqlite: a statement that writes cannot run outside a transaction while the rows " +
	"of another one that writes (INSERT … RETURNING) are open on the same connection: close them first, or use a transaction")

// mapErr replaces what SQLite reports by the real cause: for a failed
// replication the cause the VFS left with the database, for a refused
// statement the authorizer's reason, for a lock wait that gave up ErrBusy.
func (c *conn) mapErr(err error) error {
	if err == nil {
		return nil
	}
	if cause := c.db.TakeError(c.id); cause != nil {
		return cause
	}
	if c.refused != nil && errors.Is(err, sqlite3.AUTH) {
		err, c.refused = c.refused, nil
		return err
	}
	if errors.Is(err, sqlite3.BUSY) {
		return fmt.Errorf("%w: no lock within the busy timeout of %v (%w)", errs.ErrBusy, c.busyTimeout, err)
	}
	return err
}

// prepareErr maps the error of preparing a statement.
func (c *conn) prepareErr(err error) error {
	err = c.mapErr(err)
	c.refused = nil
	return err
}

// authorize is the connection's SQLite authorizer. It runs while a
// statement is prepared, before anything ran, and refuses what would write
// outside the replicated WAL or break replication (DESIGN.md lists them):
//
//   - setting journal_mode (only WAL is replicated) or locking_mode
//     (an exclusive lock keeps the node from applying the cluster's
//     writes);
//   - checkpoints (PRAGMA wal_checkpoint, setting wal_autocheckpoint): on
//     the leader the WAL holds transactions Raft has not committed, which
//     only the node's own checkpoints leave out;
//   - any change to the content, schema or pragmas of an ATTACHed
//     database: its file is local to this node.
//
// A connection that runs a client's statements (Serve) also refuses ATTACH
// and VACUUM INTO: both would reach files of this node's machine at paths
// the client chose.
//
// Reading attached databases, and the connection's own temp schema, stay
// allowed on purpose, as do VACUUM INTO a local file (a backup) and
// ANALYZE and REINDEX (which change no content).
func (c *conn) authorize(action sqlite3.AuthorizerActionCode, name3, name4, schema, _ string) sqlite3.AuthorizerReturnCode {
	refuse := func(format string, a ...any) sqlite3.AuthorizerReturnCode {
		c.refused = fmt.Errorf("%w: "+format, append([]any{errs.ErrRefused}, a...)...)
		return sqlite3.AUTH_DENY
	}
	switch action {
	case sqlite3.AUTH_ATTACH:
		if c.server && c.running == "VACUUM" {
			return refuse("VACUUM INTO from a client of this node would write a file on this node's machine")
		}
		if c.server {
			return refuse("ATTACH from a client of this node would open a file on this node's machine")
		}
	case sqlite3.AUTH_PRAGMA:
		switch strings.ToLower(name3) {
		case "wal_checkpoint":
			return refuse("PRAGMA wal_checkpoint: the node checkpoints by itself, and copies only what Raft committed into the database file")
		case "wal_autocheckpoint":
			if name4 != "" {
				return refuse("PRAGMA wal_autocheckpoint=%s: the node checkpoints by itself, and copies only what Raft committed into the database file", name4)
			}
		}
		if name4 == "" {
			return sqlite3.AUTH_OK // reading a pragma
		}
		if attached(schema) {
			return refuse("PRAGMA %s.%s=%s: attached files are not replicated", schema, name3, name4)
		}
		switch strings.ToLower(name3) {
		case "journal_mode":
			return refuse("PRAGMA journal_mode=%s: a replicated database stays in WAL mode", name4)
		case "locking_mode":
			return refuse("PRAGMA locking_mode=%s: the node must be able to apply the cluster's writes", name4)
		}

	case sqlite3.AUTH_ALTER_TABLE:
		if attached(name3) {
			return refuse("ALTER TABLE in attached database %q: attached files are not replicated", name3)
		}
	case sqlite3.AUTH_INSERT, sqlite3.AUTH_UPDATE, sqlite3.AUTH_DELETE,
		sqlite3.AUTH_CREATE_TABLE, sqlite3.AUTH_CREATE_INDEX, sqlite3.AUTH_CREATE_TRIGGER, sqlite3.AUTH_CREATE_VIEW,
		sqlite3.AUTH_DROP_TABLE, sqlite3.AUTH_DROP_INDEX, sqlite3.AUTH_DROP_TRIGGER, sqlite3.AUTH_DROP_VIEW,
		sqlite3.AUTH_CREATE_VTABLE, sqlite3.AUTH_DROP_VTABLE:
		switch {
		case !attached(schema):
		case c.running == "VACUUM" && strings.HasPrefix(schema, "vacuum_") && c.server:
			return refuse("VACUUM INTO from a client of this node would write a file on this node's machine")
		case c.running == "VACUUM" && strings.HasPrefix(schema, "vacuum_"): // VACUUM INTO's own target
		case c.running == "ANALYZE", c.running == "PRAGMA" && strings.HasPrefix(strings.ToLower(name3), "sqlite_stat"):
			// statistics only (ANALYZE, PRAGMA optimize)
		default:
			return refuse("writing to attached database %q: attached files are not replicated", schema)
		}
	}
	switch action {
	case sqlite3.AUTH_CREATE_TABLE, sqlite3.AUTH_CREATE_INDEX, sqlite3.AUTH_CREATE_TRIGGER, sqlite3.AUTH_CREATE_VIEW,
		sqlite3.AUTH_DROP_TABLE, sqlite3.AUTH_DROP_INDEX, sqlite3.AUTH_DROP_TRIGGER, sqlite3.AUTH_DROP_VIEW,
		sqlite3.AUTH_CREATE_VTABLE, sqlite3.AUTH_DROP_VTABLE:
		if schema == "main" {
			c.changes.schemaChanged()
		}
	case sqlite3.AUTH_ALTER_TABLE:
		if name3 == "main" {
			c.changes.schemaChanged()
		}
	case sqlite3.AUTH_PRAGMA:
		if name4 != "" && !attached(schema) {
			c.changes.unknown() // user_version and the like: no hook sees them
		}
	}
	return sqlite3.AUTH_OK
}

// firstKeyword returns the first word of query, upper-cased, past white
// space and comments. The authorizer lets VACUUM write to the database it
// attaches itself for VACUUM INTO ("vacuum_…"), and ANALYZE write its
// statistics into attached files.
func firstKeyword(query string) string { return FirstKeyword(query) }

// FirstKeyword returns the first word of a statement, upper-cased, past
// white space and comments ("" if none).
func FirstKeyword(query string) string {
	if f := keywords(query, 1); len(f) == 1 {
		return f[0]
	}
	return ""
}

// attached reports whether schema names an ATTACHed database.
func attached(schema string) bool {
	return schema != "" && !strings.EqualFold(schema, "main") && !strings.EqualFold(schema, "temp")
}
