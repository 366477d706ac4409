package dump

import (
	"path/filepath"
	"testing"
)

// roundTripFrom is roundTrip between databases of the given text encodings.
func roundTripFrom(t *testing.T, srcEnc, dstEnc, setup, query string) {
	t.Helper()
	dir := t.TempDir()
	src := openDB(t, filepath.Join(dir, "src.db"))
	exec(t, src, "PRAGMA encoding='"+srcEnc+"'")
	exec(t, src, setup)
	want := rowsOf(t, src, query)
	src.Close()
	dst := openDB(t, filepath.Join(dir, "dst.db"))
	exec(t, dst, "PRAGMA encoding='"+dstEnc+"'")
	if err := replace(t, filepath.Join(dir, "src.db"), dst); err != nil {
		t.Fatalf("replace: %v", err)
	}
	if got := rowsOf(t, dst, query); got != want {
		t.Errorf("%s -> %s after Replace:\n got %q\nwant %q", srcEnc, dstEnc, got, want)
	}
}

func TestTextWithNULAcrossEncodings(t *testing.T) {
	setup := `CREATE TABLE t (s TEXT); INSERT INTO t VALUES ('a' || char(0) || 'é')`
	q := `SELECT s, length(s) FROM t`
	roundTripFrom(t, "UTF-16le", "UTF-8", setup, q)
	roundTripFrom(t, "UTF-8", "UTF-16le", setup, q)
	roundTripFrom(t, "UTF-16be", "UTF-16le", setup, q)
}

func TestIntegerPrimaryKeyAndRowid(t *testing.T) {
	roundTrip(t, `CREATE TABLE t (id INTEGER PRIMARY KEY, v); INSERT INTO t VALUES (7, 'a'), (-3, 'b')`, `SELECT rowid, id, v FROM t ORDER BY id`)
}

func TestRowidHiddenByAColumn(t *testing.T) {
	roundTrip(t, `CREATE TABLE t (rowid TEXT, v); INSERT INTO t(oid, rowid, v) VALUES (100, 'x', 1), (5, 'y', 2)`, `SELECT oid, rowid, v FROM t ORDER BY oid`)
}

// Reals keep their value and type (-0.0 becomes 0.0, as with sqlite3's own
// quote(), and is left out).
func TestReals(t *testing.T) {
	roundTrip(t, `CREATE TABLE t (r); INSERT INTO t VALUES (0.1), (1.0/3), (1.7976931348623157e308), (4.9e-324), (123456789012345678.0), (2.0)`, `SELECT r, typeof(r), hex(CAST(r AS BLOB)) FROM t`)
}
