package main

import (
	"bytes"
	"context"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/godqlite/dqlite"
)

// timeout is the Raft heartbeat and election timeout of the tests' nodes.
func timeout() time.Duration {
	if raceEnabled {
		return 1500 * time.Millisecond
	}
	return 500 * time.Millisecond
}

// startCluster starts n nodes on 127.0.0.1 and waits for a leader.
func startCluster(t *testing.T, n int) []*dqlite.Node {
	t.Helper()
	var ls []net.Listener
	var peers []dqlite.Peer
	for i := range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ls = append(ls, l)
		peers = append(peers, dqlite.Peer{ID: dqlite.NodeID(i + 1), Address: l.Addr().String()})
	}
	var nodes []*dqlite.Node
	for i := range n {
		node, err := dqlite.New(dqlite.Config{ID: peers[i].ID, Address: peers[i].Address, Listener: ls[i],
			Dir: t.TempDir(), Cluster: peers, HeartbeatTimeout: timeout(), ElectionTimeout: timeout()})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { node.Close() })
		nodes = append(nodes, node)
	}
	waitLeader(t, nodes)
	return nodes
}

func waitLeader(t *testing.T, nodes []*dqlite.Node) *dqlite.Node {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		for _, n := range nodes {
			if n != nil && n.IsLeader() {
				return n
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatal("no leader")
	return nil
}

// checkConverged is the cluster's invariant: every node applies what the
// leader has, holds the same content, and passes integrity_check.
func checkConverged(t *testing.T, nodes []*dqlite.Node, name string) {
	t.Helper()
	ctx := context.Background()
	leader := waitLeader(t, nodes)
	var want bytes.Buffer
	if err := leader.Dump(ctx, name, &want); err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := n.WaitApplied(cctx, leader.AppliedIndex())
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		var got bytes.Buffer
		if err := n.Dump(ctx, name, &got); err != nil {
			t.Fatal(err)
		}
		if got.String() != want.String() {
			t.Errorf("node %d's content differs from the leader's", n.ID())
		}
		db, err := n.Open(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		var ok string
		if err := db.QueryRow(`PRAGMA integrity_check`).Scan(&ok); err != nil || ok != "ok" {
			t.Errorf("node %d: integrity_check %q, %v", n.ID(), ok, err)
		}
		db.Close()
	}
}

// shellRun runs the shell with stdin and returns its exit status, stdout
// and stderr.
func shellRun(t *testing.T, stdin string, args ...string) (int, string, string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code := run(context.Background(), args, strings.NewReader(stdin), &out, &errOut)
	return code, out.String(), errOut.String()
}

// TestShell_Script drives the shell through stdin and -c, as a script or
// a person piping commands would: SQL over several lines, a trigger,
// transactions across lines, result tables, bad input (malformed SQL, an
// unknown command, bad arguments), and the dot commands.
func TestShell_Script(t *testing.T) {
	nodes := startCluster(t, 3)
	var follower *dqlite.Node
	for _, n := range nodes {
		if !n.IsLeader() {
			follower = n
		}
	}
	addr := follower.Address() // a follower: the shell finds the leader
	code, out, errOut := shellRun(t, "", "-c", `CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT); INSERT INTO t VALUES (1, 'one')`, addr, "app.db")
	if code != 0 || errOut != "" {
		t.Fatalf("-c: exit %d, stderr %q", code, errOut)
	}

	script := `INSERT INTO t VALUES
  (2, 'two; with a semicolon');
CREATE TRIGGER t_log AFTER INSERT ON t BEGIN
  INSERT INTO t VALUES (new.id + 100, 'log');
END;
SELEC oops;
.nosuch
.add notanid 127.0.0.1:1
BEGIN;
INSERT INTO t VALUES (3, 'three');
COMMIT;
SELECT id, name FROM t ORDER BY id;
.leader
.cluster
`
	code, out, errOut = shellRun(t, script, addr, "app.db")
	t.Logf("stdout:\n%s\nstderr:\n%s", out, errOut)
	if code != 1 {
		t.Errorf("exit %d after errors, want 1", code)
	}
	for _, want := range []string{`near "SELEC": syntax error`, "unknown command .nosuch", `"notanid" is not a node ID`} {
		if !strings.Contains(errOut, want) {
			t.Errorf("stderr lacks %q", want)
		}
	}
	for _, want := range []string{
		"id   name\n---  ---------------------\n1    one\n2    two; with a semicolon\n3    three\n103  log\n",
		leaderLine(t, nodes),
		"ID  ADDRESS",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("stdout lacks %q", want)
		}
	}
	if strings.Count(out, " voter ") != 3 || strings.Count(out, "leader") < 1 || strings.Count(out, "follower") != 2 {
		t.Errorf(".cluster does not show 3 voters, a leader and 2 followers:\n%s", out)
	}

	// .dump, .backup, .restore.
	dir := t.TempDir()
	backup := filepath.Join(dir, "app-backup.db")
	dumpFile := filepath.Join(dir, "app.sql")
	code, out, errOut = shellRun(t, ".backup "+backup+"\n.dump "+dumpFile+"\n.backup "+backup+"\n", addr, "app.db")
	if code != 1 || !strings.Contains(errOut, "exists") || !strings.Contains(out, "backed up app.db") {
		t.Errorf("backup twice: exit %d, stdout %q, stderr %q (want the second refused)", code, out, errOut)
	}
	text, err := os.ReadFile(dumpFile)
	if err != nil || !strings.Contains(string(text), `INSERT INTO "t"(rowid, "id", "name") VALUES(2,2,'two; with a semicolon')`) ||
		!strings.Contains(string(text), "CREATE TRIGGER t_log") {
		t.Errorf("dump: %v\n%s", err, text)
	}
	code, _, errOut = shellRun(t, "", "-c", `DELETE FROM t; DROP TRIGGER t_log; CREATE TABLE other (x)`, addr, "app.db")
	if code != 0 {
		t.Fatalf("delete: %s", errOut)
	}
	code, out, errOut = shellRun(t, "", "-c", ".restore "+backup+"\nSELECT count(*) AS n FROM t;\nSELECT count(*) AS n FROM sqlite_schema WHERE name = 'other';", addr, "app.db")
	if code != 0 || !strings.Contains(out, "n\n-\n4\n") || !strings.Contains(out, "n\n-\n0\n") {
		t.Errorf("restore: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	// A bad file to restore changes nothing.
	bad := filepath.Join(dir, "bad.db")
	os.WriteFile(bad, []byte("definitely not SQLite"), 0o644)
	code, _, errOut = shellRun(t, "", "-c", ".restore "+bad, addr, "app.db")
	if code != 1 || !strings.Contains(errOut, "not an intact SQLite database") {
		t.Errorf("restore of a bad file: exit %d, stderr %q", code, errOut)
	}
	code, out, _ = shellRun(t, "", "-c", "SELECT count(*) AS n FROM t", addr, "app.db")
	if code != 0 || !strings.Contains(out, "n\n-\n4\n") {
		t.Errorf("after the bad restore: %q", out)
	}
	checkConverged(t, nodes, "app.db")
}

func leaderLine(t *testing.T, nodes []*dqlite.Node) string {
	l := waitLeader(t, nodes)
	return l.Address() + "\n"
}

// TestShell_Membership adds a node with .add, moves leadership with
// .transfer and removes the node with .remove.
func TestShell_Membership(t *testing.T) {
	nodes := startCluster(t, 3)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	fresh, err := dqlite.New(dqlite.Config{ID: 4, Address: l.Addr().String(), Listener: l, Dir: t.TempDir(),
		HeartbeatTimeout: timeout(), ElectionTimeout: timeout()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fresh.Close() })
	addr := nodes[0].Address()
	code, out, errOut := shellRun(t, ".add 4 "+fresh.Address()+"\n.cluster\n", addr)
	t.Logf("%s%s", out, errOut)
	if code != 0 || strings.Count(out, " voter ") != 4 {
		t.Fatalf(".add: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	all := append(nodes, fresh)
	// The transfer is Raft's: node 4 campaigns, and on a loaded machine
	// the old leader may win the election back. Three tries.
	for try := 1; ; try++ {
		old := waitLeader(t, all)
		code, out, errOut = shellRun(t, ".transfer 4\n", addr)
		if code != 0 {
			t.Fatalf(".transfer: exit %d, %q %q", code, out, errOut)
		}
		deadline := time.Now().Add(5 * time.Second)
		for !fresh.IsLeader() && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond) // the old leader's view of its role lags a moment
		}
		if fresh.IsLeader() {
			break
		}
		t.Logf("try %d: leader after .transfer 4: node %d (was %d)", try, waitLeader(t, all).ID(), old.ID())
		if try == 3 {
			t.Fatalf("node 4 never became the leader after .transfer 4")
		}
	}
	code, out, errOut = shellRun(t, ".transfer\n.remove 4\n.cluster\n", addr)
	t.Logf("%s%s", out, errOut)
	if code != 0 || strings.Count(out, " voter ") != 3 || strings.Contains(out, fresh.Address()) {
		t.Errorf(".remove: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	code, _, errOut = shellRun(t, ".remove 9\n", addr)
	if code != 1 || !strings.Contains(errOut, "no such node") {
		t.Errorf(".remove of a non-member: exit %d, %q", code, errOut)
	}
}

// TestShell_Roles: .add with a role, .role, and .cluster showing them.
func TestShell_Roles(t *testing.T) {
	nodes := startCluster(t, 3)
	var fresh []*dqlite.Node
	for id := 4; id <= 5; id++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		n, err := dqlite.New(dqlite.Config{ID: dqlite.NodeID(id), Address: l.Addr().String(), Listener: l, Dir: t.TempDir(),
			HeartbeatTimeout: timeout(), ElectionTimeout: timeout()})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { n.Close() })
		fresh = append(fresh, n)
	}
	addr := nodes[0].Address()
	code, out, errOut := shellRun(t, ".add 4 "+fresh[0].Address()+" standby\n.add 5 "+fresh[1].Address()+" spare\n.cluster\n", addr)
	t.Logf("%s%s", out, errOut)
	if code != 0 || strings.Count(out, " voter ") != 3 || strings.Count(out, " standby ") != 1 || strings.Count(out, " spare ") != 1 {
		t.Fatalf(".add with roles: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	code, out, errOut = shellRun(t, ".role 5 standby\n.role 4 voter\n.cluster\n", addr)
	t.Logf("%s%s", out, errOut)
	if code != 0 || strings.Count(out, " voter ") != 4 || strings.Count(out, " standby ") != 1 || strings.Contains(out, " spare ") {
		t.Errorf(".role: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	for _, bad := range []struct{ cmd, want string }{
		{".role 5 observer", "unknown role"},
		{".role 9 voter", "no such node"},
		{".role 5", "usage"},
		{".add 6 127.0.0.1:1 observer", "unknown role"},
	} {
		code, _, errOut := shellRun(t, bad.cmd+"\n", addr)
		if code != 1 || !strings.Contains(strings.ToLower(errOut), bad.want) {
			t.Errorf("%s: exit %d, %q, want %q", bad.cmd, code, errOut, bad.want)
		}
	}
}

// TestShell_Unreachable: a cluster that does not answer gives a clear
// error and exit status 1, quickly; bad usage gives status 2.
func TestShell_Unreachable(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // nothing listens there now
	code, _, errOut := shellRun(t, "", "-timeout", "1s", "-c", "SELECT 1", addr, "app.db")
	if code != 1 || !strings.Contains(errOut, "no leader") {
		t.Errorf("SELECT on an unreachable cluster: exit %d, stderr %q", code, errOut)
	}
	code, _, errOut = shellRun(t, ".cluster\n", addr)
	if code != 1 || !strings.Contains(errOut, "no member answered") {
		t.Errorf(".cluster on an unreachable cluster: exit %d, stderr %q", code, errOut)
	}
	if code, _, _ := shellRun(t, ""); code != 2 {
		t.Errorf("no arguments: exit %d, want 2", code)
	}
	if code, _, errOut := shellRun(t, "", "recover", "-dir", t.TempDir()); code != 2 || !strings.Contains(errOut, "usage") {
		t.Errorf("recover without -members: exit %d, %q", code, errOut)
	}
	code, _, errOut = shellRun(t, "", "recover", "-dir", t.TempDir(), "-members", "1="+addr)
	if code != 1 || !strings.Contains(errOut, "recovery refused") {
		t.Errorf("recover of an empty directory: exit %d, %q", code, errOut)
	}
}

// TestShell_RecoverRefusedOnHealthyCluster: recover on a stopped member of
// a working cluster is refused and says why.
func TestShell_RecoverRefusedOnHealthyCluster(t *testing.T) {
	nodes := startCluster(t, 3)
	var f *dqlite.Node
	for _, n := range nodes {
		if !n.IsLeader() {
			f = n
		}
	}
	dir, addr, id := f.Dir(), f.Address(), f.ID()
	f.Close()
	code, _, errOut := shellRun(t, "", "recover", "-dir", dir, "-members", strings.Join([]string{itoa(id) + "=" + addr}, ","))
	t.Logf("%s", errOut)
	if code != 1 || !strings.Contains(errOut, "the cluster works") {
		t.Errorf("recover on a healthy cluster: exit %d, %q", code, errOut)
	}
	code, out, errOut := shellRun(t, "", "recover", "-dir", dir, "-show")
	if want := "node " + itoa(id) + ": last entry term "; code != 0 || !strings.Contains(out, want) || strings.Count(out, "127.0.0.1:") != 3 {
		t.Errorf("recover -show: exit %d, stdout %q (want %q and 3 members), stderr %q", code, out, want, errOut)
	}
}

func itoa(id dqlite.NodeID) string { return strconv.FormatUint(uint64(id), 10) }

// TestShell_Interactive types at the prompt as a person would, through a
// terminal: line editing (backspace, cursor moves), a statement over two
// lines, history (arrow up runs the last line again, and it is saved in
// ~/.dqlite_history), and Ctrl-D to leave.
func TestShell_Interactive(t *testing.T) {
	nodes := startCluster(t, 1)
	t.Setenv("HOME", t.TempDir())
	isTerminal := terminal
	terminal = func(io.Reader) bool { return true }
	t.Cleanup(func() { terminal = isTerminal })
	keys := strings.Join([]string{
		"CREATE TABLE t (x);\r",
		"INSERT INTO t VALUES (41);\r",
		"SELECT x + 1 AS answer\r",
		"FROM t;\r",
		"SELECTX\x7f 'edited' AS e;\r", // backspace
		"SELECT 'b' AS q;\x1b[D2\r",    // cursor left, before the semicolon: q2
		"\x1b[A\r",                     // up: the last line again
		"\x04",                         // Ctrl-D
	}, "")
	var out bytes.Buffer
	code := run(context.Background(), []string{nodes[0].Address(), "app.db"}, strings.NewReader(keys), &out, &out)
	screen := strings.ReplaceAll(out.String(), "\r\n", "\n")
	t.Logf("screen:\n%s", screen)
	if code != 0 {
		t.Errorf("exit %d", code)
	}
	for _, want := range []string{"answer\n------\n42\n", "e\n------\nedited\n", "(1 row, ", "   ...> ", "leader: "} {
		if !strings.Contains(screen, want) {
			t.Errorf("screen lacks %q", want)
		}
	}
	if n := strings.Count(screen, "q2\n--\nb\n"); n != 2 {
		t.Errorf("the edited line and its repeat from history ran %d times, want 2", n)
	}
	b, err := os.ReadFile(filepath.Join(os.Getenv("HOME"), ".dqlite_history"))
	if err != nil || !strings.Contains(string(b), "SELECT 'edited' AS e;\nSELECT 'b' AS q2;\n") {
		t.Errorf("history file: %q, %v", b, err)
	}
}

// TestShell_TLS: "dqlite certs" makes certificates that a cluster with
// Config.TLS and the shell's -cert, -key and -ca use; without them the
// shell is refused.
func TestShell_TLS(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "certs")
	if code, out, errOut := shellRun(t, "", "certs", "-dir", dir); code != 0 {
		t.Fatalf("certs: %d %q %q", code, out, errOut)
	}
	if code, _, errOut := shellRun(t, "", "certs", "-dir", dir); code != 1 || !strings.Contains(errOut, "not overwriting") {
		t.Errorf("certs again: %d %q", code, errOut)
	}
	nodeTLS, err := dqlite.LoadTLS(filepath.Join(dir, "node.crt"), filepath.Join(dir, "node.key"), filepath.Join(dir, "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	n, err := dqlite.New(dqlite.Config{ID: 1, Address: l.Addr().String(), Listener: l, Dir: t.TempDir(), TLS: nodeTLS,
		Cluster: []dqlite.Peer{{ID: 1, Address: l.Addr().String()}}})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	waitLeader(t, []*dqlite.Node{n})
	tlsArgs := []string{"-cert", filepath.Join(dir, "client.crt"), "-key", filepath.Join(dir, "client.key"), "-ca", filepath.Join(dir, "ca.crt")}
	code, out, errOut := shellRun(t, "", append(tlsArgs, "-c", "CREATE TABLE t (x); INSERT INTO t VALUES (7); SELECT x FROM t;\n.cluster", n.Address(), "app.db")...)
	if code != 0 || !strings.Contains(out, "x\n-\n7\n") || !strings.Contains(out, "leader") {
		t.Errorf("shell over TLS: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	code, _, errOut = shellRun(t, "", "-timeout", "1s", "-c", "SELECT x FROM t", n.Address(), "app.db")
	if code != 1 || !strings.Contains(errOut, "no leader") {
		t.Errorf("shell without TLS: exit %d, stderr %q", code, errOut)
	}
	if code, _, errOut := shellRun(t, "", "-cert", "x.crt", "-c", "SELECT 1", n.Address(), "app.db"); code != 2 || !strings.Contains(errOut, "needs -cert, -key and -ca") {
		t.Errorf("shell with -cert only: exit %d, %q", code, errOut)
	}
}
