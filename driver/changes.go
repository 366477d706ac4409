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
type changeSet struct {
	tables map[string]*tableSet
	order  []string // tables in the order first changed
	keys   int
	// The last pre-update event: an UPDATE that moves a row to another
	// rowid changes both, and only the pre-update hook tells the old one.
	last struct {
		table    string
		old, new int64
		update   bool
	}
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
	cs.table(d.Table).ops |= opBit(d.Op)
	cs.last.table, cs.last.old, cs.last.new, cs.last.update = d.Table, d.OldRowID, d.NewRowID, d.Op == sqlite3.AUTH_UPDATE
}

// update sees the row changes of rowid tables, after each.
func (cs *changeSet) update(op sqlite3.AuthorizerActionCode, schema, table string, rowid int64) {
	if schema != "main" {
		return
	}
	t := cs.table(table)
	t.rowid = true
	t.ops |= opBit(op)
	cs.key(t, rowid)
	if l := cs.last; l.update && l.table == table && l.new == rowid && l.old != rowid {
		cs.key(t, l.old)
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
