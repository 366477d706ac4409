package driver

import (
	"slices"

	"github.com/ncruces/go-sqlite3"

	"github.com/godqlite/dqlite/internal/command"
)

// maxKeys bounds the rowids one transaction records: past it, the tables
// it changes are marked partial (see command.OpPartial).
const maxKeys = 1 << 16

// changeSet collects what the connection's write transaction changed, from
// SQLite's hooks, which run on the goroutine stepping the statement.
//
// The pre-update hook sees every row change: those of WITHOUT ROWID
// tables (whose rowids it reports are meaningless), rows that REPLACE
// deletes, and DELETE without WHERE (SQLite does not use its truncate
// optimization while the hook is set). The update hook misses those, but
// it fires only for rowid tables: a table it reported is one whose
// pre-update rowids are keys.
type changeSet struct {
	tables map[string]*tableSet
	order  []string // tables in the order first changed
	keys   int
}

type tableSet struct {
	ops   uint8
	keys  []int64
	rowid bool // the update hook reported a row: a rowid table
}

func (cs *changeSet) table(name string) *tableSet {
	if cs.tables == nil {
		cs.tables = map[string]*tableSet{}
	}
	t := cs.tables[name]
	if t == nil {
		t = &tableSet{}
		cs.tables[name] = t
		cs.order = append(cs.order, name)
	}
	return t
}

func opBit(op sqlite3.AuthorizerActionCode) uint8 {
	switch op {
	case sqlite3.AUTH_INSERT:
		return command.OpInsert
	case sqlite3.AUTH_UPDATE:
		return command.OpUpdate
	case sqlite3.AUTH_DELETE:
		return command.OpDelete
	}
	return 0
}

// preUpdate sees every row change, WITHOUT ROWID tables' too (whose
// rowids it reports are meaningless).
func (cs *changeSet) preUpdate(d sqlite3.PreUpdateData) {
	if d.Schema != "main" {
		return // temporary tables are not replicated
	}
	t := cs.table(d.Table)
	t.ops |= opBit(d.Op)
	switch d.Op {
	case sqlite3.AUTH_INSERT:
		cs.key(t, d.NewRowID)
	case sqlite3.AUTH_DELETE:
		cs.key(t, d.OldRowID)
	case sqlite3.AUTH_UPDATE:
		cs.key(t, d.OldRowID)
		if d.NewRowID != d.OldRowID {
			cs.key(t, d.NewRowID)
		}
	}
}

// update marks the table a rowid table.
func (cs *changeSet) update(_ sqlite3.AuthorizerActionCode, schema, table string, _ int64) {
	if schema == "main" {
		cs.table(table).rowid = true
	}
}

// schemaTable names, in a transaction's changes, a change of the schema.
const schemaTable = "sqlite_schema"

// schemaChanged notes a statement that changes the schema. SQLite's hooks
// do not see its tables, so the authorizer says it, when the statement is
// prepared (which, but for a statement prepared in one transaction and
// run in a later one, is when it runs).
func (cs *changeSet) schemaChanged() {
	cs.table(schemaTable).ops |= command.OpUpdate
}

// ddl reports whether a statement changes the main schema.
func ddl(query string) bool {
	kw := keywords(query, 2)
	return len(kw) == 2 && (kw[0] == "CREATE" || kw[0] == "DROP" || kw[0] == "ALTER") &&
		kw[1] != "TEMP" && kw[1] != "TEMPORARY"
}

// unknown notes a change no hook sees (a PRAGMA that writes the database
// header, such as user_version): the transaction's changes are then
// marked unknown.
func (cs *changeSet) unknown() {
	cs.table("").ops |= command.OpPartial
}

func (cs *changeSet) key(t *tableSet, k int64) {
	if cs.keys >= maxKeys {
		t.ops |= command.OpPartial
		return
	}
	t.keys = append(t.keys, k)
	cs.keys++
}

// take returns what the transaction changed and starts afresh.
func (cs *changeSet) take() command.TxChanges {
	var out command.TxChanges
	for _, name := range cs.order {
		t := cs.tables[name]
		if !t.rowid {
			t.ops |= command.OpPartial // WITHOUT ROWID: no keys
			t.keys = nil
		}
		slices.Sort(t.keys)
		out = append(out, command.TableChanges{Table: name, Ops: t.ops, Keys: slices.Compact(t.keys)})
	}
	cs.reset()
	return out
}

func (cs *changeSet) reset() { *cs = changeSet{} }

// watchChanges installs the hooks that record the connection's changes;
// the commit hook hands them to the database as the transaction commits.
func (c *conn) watchChanges() {
	c.raw.PreUpdateHook(c.changes.preUpdate)
	c.raw.UpdateHook(c.changes.update)
	c.raw.CommitHook(func() bool {
		if len(c.changes.order) > 0 {
			c.db.StageChanges(c.id, c.changes.take())
		}
		return true
	})
	c.raw.RollbackHook(c.changes.reset)
}
