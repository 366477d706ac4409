package dqlite

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ncruces/go-sqlite3"

	sqldump "github.com/godqlite/dqlite/internal/dump"
)

// richSchema exercises what a dump and a restore must carry: every value
// type, quotes, rowids with gaps, AUTOINCREMENT, WITHOUT ROWID, a
// generated column, an index, a view, a trigger, foreign keys,
// sqlite_stat1 and user_version.
const richSchema = `
CREATE TABLE kinds (id INTEGER PRIMARY KEY AUTOINCREMENT, i INTEGER, r REAL, s TEXT, b BLOB, n);
INSERT INTO kinds (i, r, s, b, n) VALUES
  (9223372036854775807, 0.1, 'it''s "quoted"', x'00ff10', NULL),
  (-1, 1e308, 'ünïcødé ✓', x'', 3.0),
  (0, -2.5e-300, '', NULL, 'text');
DELETE FROM kinds WHERE id = 2;
CREATE TABLE loose (a, b);
INSERT INTO loose (rowid, a, b) VALUES (10, 1, 2), (1000, 'x', NULL);
CREATE TABLE pairs (k TEXT PRIMARY KEY, v INTEGER) WITHOUT ROWID;
INSERT INTO pairs VALUES ('b', 2), ('a', 1);
CREATE TABLE parent (id INTEGER PRIMARY KEY);
CREATE TABLE child (id INTEGER PRIMARY KEY, p INTEGER REFERENCES parent(id), twice INTEGER GENERATED ALWAYS AS (p * 2));
INSERT INTO parent VALUES (1), (2);
INSERT INTO child (id, p) VALUES (1, 1), (2, 2);
CREATE INDEX child_p ON child (p);
CREATE VIEW big AS SELECT * FROM kinds WHERE i > 0;
CREATE TRIGGER log_pairs AFTER INSERT ON pairs BEGIN INSERT INTO loose (a, b) VALUES ('pair', new.k); END;
ANALYZE;
PRAGMA user_version = 42;
`

// fileDump returns the dump of a plain SQLite file.
func fileDump(t *testing.T, path string) string {
	t.Helper()
	c, err := sqldump.OpenFile(path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var b bytes.Buffer
	if err := sqldump.Write(context.Background(), sqldump.Raw(c), &b); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

func nodeDump(t *testing.T, n *Node, name string) string {
	t.Helper()
	var b bytes.Buffer
	if err := n.Dump(context.Background(), name, &b); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// TestBackup_RoundTrip: a backup taken on a follower while writes go on
// is a plain, intact SQLite file holding every write acknowledged before
// it began; restored into a new cluster it gives the same content; a dump
// loads into an empty SQLite database and gives the same content again.
func TestBackup_RoundTrip(t *testing.T) {
	ctx := context.Background()
	a := newCluster(t, 3)
	l := a.waitLeader()
	f := a.follower(l)
	mustExec(t, a.db(l, "app.db"), richSchema+`CREATE TABLE w (id INTEGER PRIMARY KEY);`)

	// Writers go on during the backup.
	o := newOutcome()
	var next atomic.Int64
	var committedAt sync.Map // id → commit index
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			db := a.db(l, "app.db")
			for {
				select {
				case <-stop:
					return
				default:
				}
				id := next.Add(1)
				var at uint64
				_, err := db.ExecContext(WithCommitIndex(ctx, &at), `INSERT INTO w VALUES (?)`, id)
				o.record(id, err)
				if err == nil {
					committedAt.Store(id, at)
				}
			}
		}()
	}
	waitFor(t, 10*time.Second, "some writes", func() bool { return next.Load() > 50 })
	var buf bytes.Buffer
	index, err := a.nodes[f].Backup(ctx, "app.db", &buf)
	if err != nil {
		t.Fatal(err)
	}
	close(stop)
	wg.Wait()
	if index == 0 {
		t.Errorf("backup index 0")
	}
	path := filepath.Join(t.TempDir(), "backup.db")
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	c, err := sqlite3.Open("file:" + path)
	if err != nil {
		t.Fatal(err)
	}
	var mode string
	var have = map[int64]bool{}
	sqldump.Raw(c).Rows(ctx, `PRAGMA journal_mode`, nil, func(v []string) error { mode = v[0]; return nil })
	sqldump.Raw(c).Rows(ctx, `SELECT id FROM w`, nil, func(v []string) error {
		var id int64
		fmt.Sscan(v[0], &id)
		have[id] = true
		return nil
	})
	c.Close()
	if mode != "delete" {
		t.Errorf("the backup's journal mode is %q, want delete (a plain file)", mode)
	}
	before := 0
	committedAt.Range(func(k, v any) bool {
		if v.(uint64) <= index {
			before++
			if !have[k.(int64)] {
				t.Errorf("row %d, committed at index %d, is not in the backup taken at index %d", k, v, index)
			}
		}
		return true
	})
	if before == 0 {
		t.Errorf("no row was committed before the backup's index %d: the test shows nothing", index)
	}
	t.Logf("backup: %d bytes at index %d, %d rows of w (%d committed at or before that index)", buf.Len(), index, len(have), before)
	want := fileDump(t, path)
	for _, s := range []string{"CREATE TABLE kinds", "X'00FF10'", "0.1", `INSERT INTO "sqlite_stat1"("tbl", "idx", "stat") VALUES('pairs','pairs','2 1')`, "PRAGMA user_version = 42",
		"INSERT INTO \"loose\"(rowid, \"a\", \"b\") VALUES(1000,'x',NULL)", "CREATE TRIGGER log_pairs", "it''s"} {
		if !strings.Contains(want, s) {
			t.Errorf("the dump lacks %q:\n%s", s, want)
		}
	}
	a.check("app.db", `SELECT id FROM w`, o)

	// Restore into a new cluster, on a follower.
	b := newCluster(t, 3)
	bl := b.waitLeader()
	bf := b.follower(bl)
	if err := b.nodes[bf].Restore(ctx, "app.db", bytes.NewReader(buf.Bytes())); err != nil {
		t.Fatal(err)
	}
	for i := range b.nodes {
		if err := b.nodes[i].WaitApplied(ctx, b.nodes[bl].AppliedIndex()); err != nil {
			t.Fatal(err)
		}
		if got := nodeDump(t, b.nodes[i], "app.db"); got != want {
			t.Errorf("node %d after restore:\n%s\nwant:\n%s", i+1, got, want)
		}
	}
	var ok string
	if err := b.db(bl, "app.db").QueryRow(`PRAGMA foreign_key_check`).Scan(&ok); !errors.Is(err, sql.ErrNoRows) {
		t.Errorf("foreign_key_check after restore: %q, %v", ok, err)
	}
	b.check("app.db", `SELECT id FROM w`, nil)

	// A dump loads into an empty SQLite database, with the same content.
	text := nodeDump(t, b.nodes[bl], "app.db")
	loaded := filepath.Join(t.TempDir(), "loaded.db")
	lc, err := sqlite3.Open("file:" + loaded)
	if err != nil {
		t.Fatal(err)
	}
	if err := lc.Exec(text); err != nil {
		t.Fatalf("loading the dump: %v", err)
	}
	lc.Close()
	if got := fileDump(t, loaded); got != want {
		t.Errorf("the dump loaded:\n%s\nwant:\n%s", got, want)
	}
}

// TestRestore_ReplacesAtomically: Restore replaces a running database's
// content in one replicated transaction. Readers on a follower see the old
// content or the new, never a mix or a missing table; a file that is not
// an intact SQLite database is refused and changes nothing; a backup of a
// database that does not exist fails with ErrNoDatabase.
func TestRestore_ReplacesAtomically(t *testing.T) {
	ctx := context.Background()
	c := newCluster(t, 3)
	l := c.waitLeader()
	f := c.follower(l)
	mustExec(t, c.db(l, "live.db"), `CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT); CREATE TABLE gone (x);
		INSERT INTO t SELECT value, 'old' FROM generate_series(1, 50)`)

	// The new content: another file with 80 rows of 'new' and no table gone.
	newPath := filepath.Join(t.TempDir(), "new.db")
	nc, err := sqlite3.Open("file:" + newPath)
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Exec(`CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT); CREATE TABLE extra (y);
		INSERT INTO t SELECT value, 'new' FROM generate_series(1, 80)`); err != nil {
		t.Fatal(err)
	}
	nc.Close()
	newFile, err := os.ReadFile(newPath)
	if err != nil {
		t.Fatal(err)
	}

	// Bad input first: nothing changes.
	for name, b := range map[string][]byte{"garbage": []byte("not a database at all, not even close"), "empty": nil,
		"truncated": newFile[:len(newFile)/2+100]} {
		err := c.nodes[f].Restore(ctx, "live.db", bytes.NewReader(b))
		t.Logf("restore of %s: %v", name, err)
		if err == nil {
			t.Errorf("restore of %s succeeded", name)
		}
	}
	if _, err := c.nodes[f].Backup(ctx, "nosuch.db", io.Discard); !errors.Is(err, ErrNoDatabase) {
		t.Errorf("backup of a missing database: %v, want ErrNoDatabase", err)
	}

	waitFor(t, 10*time.Second, "the follower to have the old content", func() bool {
		var n int
		c.db(f, "live.db").QueryRow(`SELECT count(*) FROM t`).Scan(&n)
		return n == 50
	})
	var seen sync.Map
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			db := c.db(f, "live.db")
			for {
				select {
				case <-stop:
					return
				default:
				}
				var n int
				var lo, hi string
				err := db.QueryRow(`SELECT count(*), min(v), max(v) FROM t`).Scan(&n, &lo, &hi)
				if err != nil {
					t.Errorf("read during the restore: %v", err)
					return
				}
				got := fmt.Sprintf("%d %s %s", n, lo, hi)
				if got != "50 old old" && got != "80 new new" {
					t.Errorf("read during the restore saw %q: a mix", got)
					return
				}
				seen.Store(got, true)
			}
		}()
	}
	waitFor(t, 5*time.Second, "the readers to read the old content", func() bool { _, ok := seen.Load("50 old old"); return ok })
	if err := c.nodes[f].Restore(ctx, "live.db", bytes.NewReader(newFile)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the readers to read the new content", func() bool { _, ok := seen.Load("80 new new"); return ok })
	close(stop)
	wg.Wait()
	var tables string
	c.db(f, "live.db").QueryRow(`SELECT group_concat(name) FROM (SELECT name FROM sqlite_schema ORDER BY name)`).Scan(&tables)
	if tables != "extra,t" {
		t.Errorf("tables after the restore: %q, want extra,t", tables)
	}
	c.check("live.db", `SELECT k FROM t`, nil)
}

// TestRestore_TooLarge: a file whose content exceeds Config.MaxTxSize is
// refused with ErrTxTooLarge before anything is written, and the database
// keeps its content.
func TestRestore_TooLarge(t *testing.T) {
	ctx := context.Background()
	c := newCluster(t, 3, func(cfg *Config) { cfg.MaxTxSize = 1 << 20 })
	l := c.waitLeader()
	mustExec(t, c.db(l, "live.db"), `CREATE TABLE t (x); INSERT INTO t VALUES (1)`)
	path := filepath.Join(t.TempDir(), "big.db")
	bc, err := sqlite3.Open(sqldump.FileURI(path))
	if err != nil {
		t.Fatal(err)
	}
	if err := bc.Exec(`CREATE TABLE t (x); INSERT INTO t SELECT randomblob(1000) FROM generate_series(1, 2000)`); err != nil {
		t.Fatal(err)
	}
	bc.Close()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	err = c.nodes[c.follower(l)].Restore(ctx, "live.db", f)
	t.Logf("%v", err)
	if !errors.Is(err, ErrTxTooLarge) {
		t.Errorf("restore of 2 MB with MaxTxSize 1 MiB: %v, want ErrTxTooLarge", err)
	}
	o := newOutcome()
	o.record(1, nil)
	c.check("live.db", `SELECT x FROM t`, o)
}
