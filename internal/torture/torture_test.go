package torture

import (
	"context"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/godqlite/dqlite/internal/crashpoint"
)

// TestMain runs the test binary as a torture node when the driver starts
// it as one.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == NodeFlag {
		os.Exit(NodeMain(os.Args[2:]))
	}
	os.Exit(m.Run())
}

func options(t *testing.T) Options {
	t.Helper()
	if !supported {
		t.Skip("the suite needs to hand listeners to child processes and SIGSTOP them")
	}
	if testing.Short() {
		t.Skip("runs node processes for a minute")
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "dqlite-"+strings.ReplaceAll(t.Name(), "/", "-")+"-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("the run's directory is kept: %s", dir)
		} else {
			os.RemoveAll(dir)
		}
	})
	return Options{Exe: []string{exe}, Dir: dir, Log: testLog{t}, CheckTimeout: time.Minute}
}

type testLog struct{ t *testing.T }

func (l testLog) Write(p []byte) (int, error) {
	l.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// TestTorture_Short is the suite's short run: three nodes under every
// nemesis for a minute, every workload, every check. Clients send their
// requests to any node: followers forward writes, and register reads are
// linearizable reads of whichever node was asked.
func TestTorture_Short(t *testing.T) {
	o := options(t)
	o.Nodes, o.Clients, o.Seed, o.Duration = 3, 2, 7, 60*time.Second
	o.Nemeses, o.Workloads = Nemeses, Workloads
	o.LogStore = "wal"
	o.AnyNode = true
	results, err := Run(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	if len(results) != len(Workloads) {
		t.Fatalf("%d results for %d workloads", len(results), len(Workloads))
	}
	for _, r := range results {
		t.Log(r)
		if !r.Pass() {
			t.Errorf("%s failed: %s", r.Workload, strings.Join(r.Problems, "; "))
		}
		if r.OK == 0 {
			t.Errorf("%s: no operation succeeded: %v", r.Workload, r.Notes)
		}
		if r.Workload == "register" && r.Linearizable != "yes" {
			t.Errorf("register history: linearizable=%s", r.Linearizable)
		}
	}
}

// TestTorture_NegativeControl reads registers from each node's own copy
// while partitions isolate nodes: stale reads must follow, and the
// linearizability check must catch them. If it did not, its "yes"
// elsewhere would mean nothing.
func TestTorture_NegativeControl(t *testing.T) {
	o := options(t)
	o.Nodes, o.Clients, o.Seed, o.Duration = 3, 4, 3, 25*time.Second
	o.Nemeses, o.Workloads, o.LocalReads = []string{"partition"}, []string{"register"}, true
	results, err := Run(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	r := results[0]
	t.Log(r)
	if r.Linearizable != "no" {
		t.Fatalf("local follower reads under partitions passed the linearizability check (%s): the checker is blind", r.Linearizable)
	}
}

// TestNet_DropsAndHeals checks the fault-injecting network alone: dropped
// traffic vanishes without an error, and healing closes the connection
// that lost data, so no stream resumes with a hole.
func TestNet_DropsAndHeals(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	slots := map[string]int{l.Addr().String(): 1}
	server, client := NewNet(1, slots), NewNet(0, slots)
	fl := server.Listener(l)
	defer fl.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := fl.Accept()
		if err == nil {
			accepted <- c
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := client.Dial(ctx, l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s := <-accepted
	defer s.Close()
	if got := s.(*faultConn).peer; got != 0 {
		t.Fatalf("accepted connection names slot %d, want 0", got)
	}
	read := func(want string) error {
		s.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		b := make([]byte, len(want))
		_, err := io.ReadFull(s, b)
		if err == nil && string(b) != want {
			t.Fatalf("read %q, want %q", b, want)
		}
		return err
	}
	if _, err := c.Write([]byte("one")); err != nil {
		t.Fatal(err)
	}
	if err := read("one"); err != nil {
		t.Fatal(err)
	}
	client.Drop([]int{1})
	if n, err := c.Write([]byte("two")); err != nil || n != 3 {
		t.Fatalf("a dropped write returned %d, %v: want 3, nil", n, err)
	}
	if err := read("two"); err == nil {
		t.Fatal("dropped data arrived")
	}
	dctx, dcancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer dcancel()
	if _, err := client.Dial(dctx, l.Addr().String()); err == nil {
		t.Fatal("a dial to a dropped peer succeeded")
	}
	client.Drop(nil)
	if _, err := c.Write([]byte("three")); err == nil {
		t.Fatal("a connection that lost data wrote again after healing")
	}
	if got := client.Dropped(); len(got) != 0 {
		t.Fatalf("still dropping %v after healing", got)
	}
}

// The same seed gives the same schedule of faults; another seed another.
func TestSchedule_Deterministic(t *testing.T) {
	a := schedule(42, Nemeses, 5*time.Minute)
	b := schedule(42, Nemeses, 5*time.Minute)
	c := schedule(43, Nemeses, 5*time.Minute)
	if len(a) < 20 {
		t.Fatalf("%d faults in 5 minutes", len(a))
	}
	if fmt.Sprint(a) != fmt.Sprint(b) {
		t.Fatal("one seed gave two schedules")
	}
	if fmt.Sprint(a) == fmt.Sprint(c) {
		t.Fatal("two seeds gave one schedule")
	}
	kinds := map[string]bool{}
	for _, f := range a {
		kinds[f.kind] = true
	}
	if len(kinds) != len(Nemeses) {
		t.Fatalf("5 minutes of every nemesis drew only %v", kinds)
	}
}

// The register model accepts what a register may do and rejects a stale
// read, so that "linearizable=yes" means something.
func TestRegisterModel(t *testing.T) {
	op := func(client int, call, ret int64, in regInput, out regOutput) porcupine.Operation {
		return porcupine.Operation{ClientId: client, Input: in, Call: call, Output: out, Return: ret}
	}
	w := func(k, v int64) regInput { return regInput{Op: "write", Key: k, V: v} }
	r := func(k int64) regInput { return regInput{Op: "read", Key: k} }
	cas := func(k, old, v int64) regInput { return regInput{Op: "cas", Key: k, Old: old, V: v} }
	for _, tc := range []struct {
		name string
		ops  []porcupine.Operation
		want porcupine.CheckResult
	}{
		{"write then read", []porcupine.Operation{
			op(0, 0, 10, w(1, 3), regOutput{}), op(1, 20, 30, r(1), regOutput{Value: 3})}, porcupine.Ok},
		{"stale read", []porcupine.Operation{
			op(0, 0, 10, w(1, 3), regOutput{}), op(1, 20, 30, r(1), regOutput{Value: 0})}, porcupine.Illegal},
		{"unknown write may have happened", []porcupine.Operation{
			op(0, 0, math.MaxInt64, w(1, 3), regOutput{Unknown: true}), op(1, 20, 30, r(1), regOutput{Value: 3})}, porcupine.Ok},
		{"unknown write may not have happened", []porcupine.Operation{
			op(0, 0, math.MaxInt64, w(1, 3), regOutput{Unknown: true}), op(1, 20, 30, r(1), regOutput{Value: 0})}, porcupine.Ok},
		{"cas succeeds on its value", []porcupine.Operation{
			op(0, 0, 10, w(1, 2), regOutput{}), op(1, 20, 30, cas(1, 2, 4), regOutput{OK: true}),
			op(0, 40, 50, r(1), regOutput{Value: 4})}, porcupine.Ok},
		{"cas cannot succeed on another value", []porcupine.Operation{
			op(0, 0, 10, w(1, 2), regOutput{}), op(1, 20, 30, cas(1, 3, 4), regOutput{OK: true})}, porcupine.Illegal},
		{"cas cannot fail on its value", []porcupine.Operation{
			op(0, 0, 10, w(1, 2), regOutput{}), op(1, 20, 30, cas(1, 2, 4), regOutput{OK: false})}, porcupine.Illegal},
		{"keys are independent", []porcupine.Operation{
			op(0, 0, 10, w(1, 2), regOutput{}), op(1, 20, 30, r(2), regOutput{Value: 0})}, porcupine.Ok},
	} {
		if got := porcupine.CheckOperationsTimeout(registerModel, tc.ops, 10*time.Second); got != tc.want {
			t.Errorf("%s: %s, want %s", tc.name, got, tc.want)
		}
	}
}

// TestCrash kills a node at each crash point (see internal/crashpoint):
// the node restarts to a state the cluster went through, converges, and
// every invariant holds.
func TestCrash(t *testing.T) {
	for _, point := range crashpoint.Points {
		t.Run(point, func(t *testing.T) {
			o := options(t)
			r, err := RunCrash(context.Background(), o, point)
			if err != nil {
				t.Fatal(err)
			}
			t.Log(r)
			if !r.Pass() {
				t.Errorf("%s", strings.Join(r.Problems, "; "))
			}
		})
	}
}

// TestTorture_StaleReads: a leader stopped while another is elected, and
// resumed, still believes it leads for a moment; a linearizable read there
// must never return a value older than one acknowledged before it began.
// Local reads, which may, are the control: they show the moment is hit.
func TestTorture_StaleReads(t *testing.T) {
	o := options(t)
	res, err := RunStaleReads(context.Background(), o, 5, 100)
	if err != nil {
		t.Fatal(err)
	}
	t.Log(res)
	if res.Rounds == 0 || res.Lin == 0 {
		t.Fatalf("no round completed: %v", res)
	}
	if res.LinStale != 0 {
		t.Errorf("%d linearizable reads returned a stale value", res.LinStale)
	}
}
