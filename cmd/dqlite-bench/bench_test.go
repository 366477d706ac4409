package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"testing"
	"time"
)

// TestMain lets the benchmark re-execute the test binary as a node.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == nodeFlag {
		os.Exit(runNode(os.Args[2:]))
	}
	os.Exit(m.Run())
}

func TestParseWorkloads(t *testing.T) {
	ws, err := parseWorkloads("insert/1, batch/1,read/8", time.Second)
	if err != nil || len(ws) != 3 || ws[2].Kind != "read" || ws[2].Clients != 8 {
		t.Fatalf("got %v, %v", ws, err)
	}
	for _, bad := range []string{"insert", "write/1", "read/0", "read/x"} {
		if _, err := parseWorkloads(bad, time.Second); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

// TestBench_SmokeJSON runs every workload briefly on this project's
// cluster (through the leader, a follower and a remote client) and local
// SQLite, and checks the JSON report.
func TestBench_SmokeJSON(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a 3-process cluster")
	}
	var out, errOut bytes.Buffer
	code := mainErr(context.Background(), []string{"-json", "-duration", "300ms", "-dir", t.TempDir(),
		"-systems", "dqlite-go,dqlite-go/follower,dqlite-go/remote,sqlite-normal,rqlite"}, &out, &errOut)
	if code != 0 {
		t.Fatalf("exit %d:\n%s", code, errOut.String())
	}
	var rep report
	if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	if len(rep.Systems) < 4 {
		t.Fatalf("systems: %+v", rep.Systems)
	}
	for _, s := range rep.Systems {
		if s.Err != "" || len(s.Results) != 6 {
			t.Errorf("%s: %d results, error %q", s.Name, len(s.Results), s.Err)
		}
		for _, r := range s.Results {
			if r.Unsupported {
				t.Errorf("%s %s: not supported", s.Name, r.Workload)
				continue
			}
			if r.Ops == 0 || r.Errors != 0 || r.P99Ms < r.P50Ms {
				t.Errorf("%s %s: %+v", s.Name, r.Workload, r)
			}
		}
	}
}
