package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestMain lets the demo re-execute the test binary as a node.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == nodeFlag {
		os.Exit(runNode(os.Args[2:], os.Stdout))
	}
	os.Exit(m.Run())
}

func TestDemo_ConvergesAfterKills(t *testing.T) {
	if testing.Short() {
		t.Skip("runs three node processes for 15s")
	}
	var out lockedBuffer
	var errOut bytes.Buffer
	// While it runs, ask node 1's HTTP API, as the printed curl commands
	// do (node 1 may be down for a moment: try again).
	api := make(chan string, 1)
	go func() { api <- askAPI(&out) }()
	code := run(context.Background(), []string{"-duration", "15s", "-dir", t.TempDir(),
		"-min-life", "3s", "-max-life", "5s", "-pause", "1s"}, &out, &errOut)
	t.Logf("demo output:\n%s%s", out.String(), errOut.String())
	if err := <-api; err != "" {
		t.Error(err)
	}
	if code != 0 {
		t.Fatalf("demo exited %d", code)
	}
	m := regexp.MustCompile(`(?m)^converged: nodes=3 acknowledged=(\d+) present=(\d+) lost=(\d+) ambiguous=(\d+) leader_changes=(\d+) kills=(\d+)$`).
		FindStringSubmatch(out.String())
	if m == nil {
		t.Fatal("no converged line")
	}
	n := func(i int) int { v, _ := strconv.Atoi(m[i]); return v }
	acked, present, lost, ambiguous, kills := n(1), n(2), n(3), n(4), n(6)
	if lost != 0 || acked == 0 || present != acked+ambiguous {
		t.Errorf("acknowledged=%d present=%d lost=%d ambiguous=%d", acked, present, lost, ambiguous)
	}
	if kills < 2 {
		t.Errorf("only %d kills in 15s", kills)
	}
	// Every 5 s a line of the cluster's status: the leader (with nodes
	// killed every few seconds, there may be none at that moment), each
	// node's role, state, applied index and lag.
	st := regexp.MustCompile(`(?m)status: (leader node \d \(term \d+\)|no leader); (node \d (voter (leader|follower) applied \d+ lag (\d+|\?)|down)(; )?){3}$`)
	if got := len(st.FindAllString(out.String(), -1)); got < 1 {
		t.Errorf("%d status lines in 15 s, want at least 1", got)
	}
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// askAPI finds node 1's HTTP API in the demo's output and asks it for its
// status and a linearizable count of the rows; it returns what went wrong.
func askAPI(out *lockedBuffer) string {
	re := regexp.MustCompile(`curl -s (http://127\.0\.0\.1:\d+)/status`)
	var base string
	for range 100 {
		if m := re.FindStringSubmatch(out.String()); m != nil {
			base = m[1]
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if base == "" {
		return "no curl command for the HTTP API in the output"
	}
	var last string
	for try := range 40 {
		if try > 0 {
			time.Sleep(250 * time.Millisecond) // node 1 may be down a moment: ask again
		}
		resp, err := http.Get(base + "/status")
		if err != nil {
			last = err.Error()
			continue
		}
		var st struct {
			ID      int `json:"id"`
			Members []struct {
				Role string `json:"role"`
			} `json:"members"`
		}
		err = json.NewDecoder(resp.Body).Decode(&st)
		resp.Body.Close()
		if err != nil || st.ID != 1 || len(st.Members) != 3 {
			last = fmt.Sprintf("/status: %v %+v", err, st)
			continue
		}
		resp, err = http.Post(base+"/db/query?db=test.db&level=linearizable", "application/json",
			strings.NewReader(`["SELECT count(*) FROM test"]`))
		if err != nil {
			last = err.Error()
			continue
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode == 200 && regexp.MustCompile(`"values":\[\[\d+\]\]`).Match(b) {
			return ""
		}
		last = fmt.Sprintf("/db/query: %d %s", resp.StatusCode, b)
	}
	return "the HTTP API never answered: " + last
}

func TestDemo_RejectsBadFlags(t *testing.T) {
	var out, errOut bytes.Buffer
	if code := run(context.Background(), []string{"-nodes", "0", "-duration", "-1s"}, &out, &errOut); code != 2 {
		t.Fatalf("exit %d, want 2", code)
	}
	for _, want := range []string{"-nodes 0", "-duration -1s"} {
		if !bytes.Contains(errOut.Bytes(), []byte(want)) {
			t.Errorf("error output lacks %q: %s", want, errOut.String())
		}
	}
}

// TestCrash_SIGKILLLeaderThenFollower kills the leader, then a follower,
// with SIGKILL while the leader inserts as fast as it can, restarts each,
// and checks that the cluster converges with nothing acknowledged lost.
func TestCrash_SIGKILLLeaderThenFollower(t *testing.T) {
	if testing.Short() {
		t.Skip("runs three node processes")
	}
	var out bytes.Buffer
	s, err := newSupervisor(options{nodes: 3, dir: t.TempDir(), duration: time.Hour,
		minLife: time.Hour, maxLife: time.Hour, pause: time.Second}, &out)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { t.Logf("output:\n%s", out.String()) }()
	if err := s.start(); err != nil {
		s.stopAll()
		t.Fatal(err)
	}
	ctx := context.Background()
	waitAcks := func(n int) {
		for deadline := time.Now().Add(30 * time.Second); len(s.acked) < n; {
			if time.Now().After(deadline) {
				s.stopAll()
				t.Fatalf("only %d acknowledged inserts, want %d", len(s.acked), n)
			}
			s.pump(ctx, 200*time.Millisecond, false)
		}
	}
	waitAcks(500)
	leader := s.leader - 1
	s.kill(leader)
	s.pump(ctx, time.Second, false)
	if err := s.restart(leader); err != nil {
		t.Fatal(err)
	}
	waitAcks(len(s.acked) + 500)
	follower := (s.leader) % 3 // s.leader is 1-based: this is another node
	s.kill(follower)
	s.pump(ctx, time.Second, false)
	if err := s.restart(follower); err != nil {
		t.Fatal(err)
	}
	waitAcks(len(s.acked) + 500)
	s.stopAll()
	if code := s.verify(); code != 0 {
		t.Fatalf("verify exited %d", code)
	}
	if !regexp.MustCompile(`converged: nodes=3 acknowledged=\d+ present=\d+ lost=0 `).Match(out.Bytes()) {
		t.Fatal("no converged line with lost=0")
	}
}
