// Package mattncheck proves that a program can use this module beside
// github.com/mattn/go-sqlite3: the binding's own database/sql driver, which
// registers "sqlite3" just like mattn's, is not linked in, and ours is
// registered under a name of its own.
package mattncheck

import (
	"context"
	"database/sql"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	_ "github.com/mattn/go-sqlite3"

	"github.com/godqlite/dqlite"
	"github.com/godqlite/dqlite/driver"
)

func TestBesideMattn(t *testing.T) {
	// Reaching this line means no init panicked with "Register called
	// twice".
	if d := sql.Drivers(); !slices.Contains(d, "sqlite3") || !slices.Contains(d, driver.Name) {
		t.Fatalf("registered drivers %v, want sqlite3 and %s", d, driver.Name)
	}

	local, err := sql.Open("sqlite3", filepath.Join(t.TempDir(), "local.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer local.Close()
	_, err = local.Exec(`CREATE TABLE t (v); INSERT INTO t VALUES ('mattn')`)
	switch {
	case err != nil && strings.Contains(err.Error(), "CGO_ENABLED=0"):
		t.Log("mattn/go-sqlite3 is built without cgo here: checked only that both drivers register")
	case err != nil:
		t.Fatal(err)
	}

	node, err := dqlite.New(dqlite.Config{ID: 1, Address: "127.0.0.1:0", Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer node.Close()
	if err := node.Bootstrap([]dqlite.Peer{{ID: 1, Address: node.Address()}}); err != nil {
		t.Fatal(err)
	}
	db, err := node.Open(context.Background(), "test.db")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var v string
	if _, err := db.Exec(`CREATE TABLE t (v); INSERT INTO t VALUES ('dqlite')`); err != nil {
		t.Fatal(err)
	}
	if err := db.QueryRow(`SELECT v FROM t`).Scan(&v); err != nil || v != "dqlite" {
		t.Fatalf("read %q, %v", v, err)
	}
}
