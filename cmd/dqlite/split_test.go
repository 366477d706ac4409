package main

import (
	"strings"
	"testing"
)

// A CASE … END; inside a trigger's body does not end the trigger.
func TestSplitTriggerWithCase(t *testing.T) {
	in := `CREATE TRIGGER tr AFTER INSERT ON t BEGIN
  UPDATE t SET y = CASE WHEN new.x > 0 THEN 1 ELSE 0 END;
  INSERT INTO log VALUES (1);
END;
SELECT 1;`
	got := splitInput(in)
	if len(got) != 2 {
		t.Errorf("split into %d statements: %q", len(got), got)
	}
}

// Semicolons in strings and comments end nothing.
func TestSplitSemicolonInString(t *testing.T) {
	got := splitInput("INSERT INTO t VALUES ('a;b'); -- c;d\nSELECT 'it''s;'; /* x; */ SELECT 2;")
	if len(got) != 3 {
		t.Errorf("split into %d statements: %q", len(got), got)
	}
}

// A comment before CREATE TRIGGER.
func TestSplitCreateTriggerWordsLater(t *testing.T) {
	// "CREATE TRIGGER" preceded by a comment.
	got := splitInput("/* c */ CREATE TRIGGER tr AFTER INSERT ON t BEGIN INSERT INTO log VALUES (1); END;")
	if len(got) != 1 {
		t.Errorf("split into %d statements: %q", len(got), got)
	}
}

// The mis-split trigger body runs as top-level statements: its DELETE
// deletes every row at once, and its END commits an open transaction.
func TestShellTriggerBodyRunsAtTopLevel(t *testing.T) {
	nodes := startCluster(t, 1)
	addr := nodes[0].Address()
	code, _, errOut := shellRun(t, "", "-c", `CREATE TABLE t (id INTEGER PRIMARY KEY, x); INSERT INTO t VALUES (1, 1), (2, 2); CREATE TABLE audit (n)`, addr, "app.db")
	if code != 0 {
		t.Fatal(errOut)
	}
	script := `BEGIN;
INSERT INTO t VALUES (3, 3);
CREATE TRIGGER purge AFTER INSERT ON audit BEGIN
  UPDATE t SET x = CASE WHEN x > 1 THEN 0 ELSE x END;
  DELETE FROM t;
END;
ROLLBACK;
`
	code, out, errOut := shellRun(t, script, addr, "app.db")
	t.Logf("exit %d, stdout %q, stderr %q", code, out, errOut)
	_, out, _ = shellRun(t, "", "-c", "SELECT count(*) FROM t;", addr, "app.db")
	if !strings.Contains(out, "\n2\n") {
		t.Errorf("after a script that rolled back: table t holds %q (want the 2 rows)", out)
	}
}

// Triggers with CASE, TEMP, strings and identifiers named end, END and
// its semicolon apart, comments after a statement, EXPLAIN.
func TestSplitCases(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int
	}{
		{"CREATE TRIGGER tr AFTER INSERT ON t BEGIN SELECT CASE WHEN 1 THEN 2 END; END; SELECT 1;", 2},
		{"CREATE TEMP TRIGGER tr AFTER INSERT ON t BEGIN SELECT CASE WHEN 1 THEN 2 END; END;\nSELECT 1;", 2},
		{"CREATE TEMPORARY TRIGGER IF NOT EXISTS tr AFTER INSERT ON t BEGIN SELECT 1; END;", 1},
		{"CREATE TRIGGER tr AFTER INSERT ON t BEGIN INSERT INTO log VALUES ('; END;'); END; SELECT 2;", 2},
		{"CREATE TRIGGER tr AFTER INSERT ON t BEGIN INSERT INTO \"end\"(end) VALUES (1); UPDATE t SET end = end; END; SELECT 2;", 2},
		{"CREATE TRIGGER tr AFTER INSERT ON t BEGIN SELECT 1; END\n;\nSELECT 3;", 2},
		{"CREATE TRIGGER tr AFTER INSERT ON t BEGIN SELECT 1; END /* c */ ;\nSELECT 3;", 2},
		{"CREATE TRIGGER tr AFTER INSERT ON t BEGIN SELECT 1; -- x; END;\nEND;\nSELECT 3;", 2},
		{"SELECT 1; -- note\n.tables", 2}, // the statement and the dot command
		{"EXPLAIN CREATE TRIGGER tr AFTER INSERT ON t BEGIN SELECT 1; END;", 1},
		{"CREATE TABLE \"end\"(x); SELECT 1;", 2},
	} {
		got := splitInput(tc.in)
		if len(got) != tc.want {
			t.Errorf("%q: split into %d: %q, want %d", tc.in, len(got), got, tc.want)
		}
	}
}
