package dqlite

import (
	"bytes"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// call sends body (a JSON text, or nil for a GET) to node's API and
// returns the status code and the decoded answer.
func call(t *testing.T, cl *http.Client, base, path, body string) (int, response, string) {
	t.Helper()
	var resp *http.Response
	var err error
	if body == "" {
		resp, err = cl.Get(base + path)
	} else {
		resp, err = cl.Post(base+path, "application/json", strings.NewReader(body))
	}
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var r response
	if strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
		if err := json.Unmarshal(raw, &r); err != nil {
			t.Fatalf("%s: %v: %s", path, err, raw)
		}
	}
	return resp.StatusCode, r, string(raw)
}

// TestHTTP_API drives the HTTP API of a 3-node cluster with a real HTTP
// client: writes through a follower (statements, arguments, a transaction
// that fails and one that commits), queries at both read levels on
// another node, bad requests, /status, /readyz and /metrics.
func TestHTTP_API(t *testing.T) {
	regs := map[NodeID]*prometheus.Registry{}
	for i := range 3 {
		regs[NodeID(i+1)] = prometheus.NewRegistry()
	}
	c := newCluster(t, 3, func(cfg *Config) {
		cfg.HTTPAddress = ":0" // no host: loopback
		cfg.Metrics = regs[cfg.ID]
		cfg.MaxTxSize = 1 << 20
	})
	l := c.waitLeader()
	f := c.follower(l)
	g := c.follower(f)
	base := func(i int) string {
		a := c.nodes[i].HTTPAddress()
		if !strings.HasPrefix(a, "127.0.0.1:") {
			t.Fatalf("HTTP API of node %d listens on %s, not on loopback", i+1, a)
		}
		return "http://" + a
	}
	cl := &http.Client{}
	o := newOutcome()

	code, r, raw := call(t, cl, base(f), "/db/execute?db=h.db", `[
		"CREATE TABLE t (id INTEGER PRIMARY KEY, s TEXT, x REAL, b BLOB)",
		["INSERT INTO t (id, s, x) VALUES (?, ?, ?)", 1, "one", 1.5],
		["INSERT INTO t (id, s) VALUES (:id, :s)", {"id": 2, "s": "two"}],
		"INSERT INTO nosuch VALUES (1)",
		["INSERT INTO t (id, s) VALUES (?, ?)", 3, null]
	]`)
	if code != 200 || len(r.Results) != 5 || r.Index == 0 {
		t.Fatalf("execute: %d %s", code, raw)
	}
	if r.Results[1].LastInsertID == nil || *r.Results[1].LastInsertID != 1 || *r.Results[1].RowsAffected != 1 ||
		r.Results[3].Error == "" || !strings.Contains(r.Results[3].Error, "nosuch") || r.Results[4].Error != "" {
		t.Errorf("execute results: %s", raw)
	}
	o.record(1, nil)
	o.record(2, nil)
	o.record(3, nil)

	// A transaction whose second statement fails commits nothing.
	code, r, raw = call(t, cl, base(f), "/db/execute?db=h.db&transaction", `[
		["INSERT INTO t (id, s) VALUES (?, ?)", 10, "ten"],
		["INSERT INTO t (id, s) VALUES (?, ?)", 1, "duplicate"]
	]`)
	if code != 200 || len(r.Results) != 2 || r.Results[1].Error == "" || r.Index != 0 {
		t.Errorf("failing transaction: %d %s", code, raw)
	}
	o.record(10, fmt.Errorf("rolled back"))
	code, r, raw = call(t, cl, base(f), "/db/execute?db=h.db&transaction", `[
		["INSERT INTO t (id, s) VALUES (?, ?)", 11, "eleven"],
		["UPDATE t SET x = ? WHERE id = ?", 2.25, 11]
	]`)
	if code != 200 || len(r.Results) != 2 || r.Results[0].Error != "" || r.Results[1].Error != "" || r.Index == 0 {
		t.Fatalf("transaction: %d %s", code, raw)
	}
	o.record(11, nil)
	index := r.Index

	// Read it on a third node: after= carries the commit index there.
	code, r, raw = call(t, cl, base(g), fmt.Sprintf("/db/query?db=h.db&after=%d", index),
		`["SELECT id, s, x FROM t ORDER BY id", ["SELECT count(*) FROM t WHERE id > ?", 1]]`)
	if code != 200 || len(r.Results) != 2 || len(r.Results[0].Values) != 4 || r.Results[0].Columns[1] != "s" ||
		r.Results[0].Types[1] != "text" || fmt.Sprint(r.Results[0].Values[3]) != "[11 eleven 2.25]" ||
		fmt.Sprint(r.Results[1].Values) != "[[3]]" {
		t.Errorf("query: %d %s", code, raw)
	}
	code, r, raw = call(t, cl, base(g), "/db/query?db=h.db&level=linearizable&associative&q="+
		url.QueryEscape("SELECT s FROM t WHERE id = 2"), "")
	if code != 200 || len(r.Results) != 1 || fmt.Sprint(r.Results[0].Rows) != "[map[s:two]]" {
		t.Errorf("linearizable GET query: %d %s", code, raw)
	}

	// Bad requests get a clear error and change nothing.
	for _, bad := range []struct {
		path, body string
		code       int
		want       string
	}{
		{"/db/execute?db=h.db", `["INSERT INTO t (id) VALUES (20)"`, 400, "not a JSON array"},
		{"/db/execute?db=h.db", `{"sql": "DELETE FROM t"}`, 400, "not a JSON array"},
		{"/db/execute?db=h.db", `[["DELETE FROM t WHERE id = ?", {"a": [1]}]]`, 400, "no SQL value"},
		{"/db/execute?db=h.db", `[42]`, 400, "a statement is a string"},
		{"/db/execute?db=h.db", `[]`, 400, "no statements"},
		{"/db/execute?db=h.db", `["DELETE FROM t"] ["DELETE FROM t"]`, 400, "more than one"},
		{"/db/execute?db=h.db", `["INSERT INTO t (id, b) VALUES (30, '` + strings.Repeat("x", 2<<20) + `')"]`, 413, "larger than"},
		{"/db/execute?db=..%2fescape", `["CREATE TABLE x (y)"]`, 400, "invalid database name"},
		{"/db/query?db=missing.db", `["SELECT 1"]`, 404, "no such database"},
		{"/db/query?db=h.db&level=psychic", `["SELECT 1"]`, 400, "unknown read level"},
		{"/db/query?db=h.db", "", 400, "needs the statement in q"},
		{"/db/execute?db=h.db", "", 405, "takes a POST"},
	} {
		code, r, raw := call(t, cl, base(f), bad.path, bad.body)
		if code != bad.code || !strings.Contains(r.Error, bad.want) {
			t.Errorf("%s %.60s: %d %.300s, want %d and %q", bad.path, bad.body, code, raw, bad.code, bad.want)
		}
	}

	// A request's statements cannot leave its connection in a state the
	// next request would inherit, nor commit part of a transaction.
	code, r, raw = call(t, cl, base(f), "/db/execute?db=h.db", `["BEGIN", "INSERT INTO t (id) VALUES (60); INSERT INTO t (id) VALUES (61)", "PRAGMA query_only=1"]`)
	if code != 200 || !strings.Contains(r.Results[0].Error, "not allowed") || r.Results[1].Error == "" {
		t.Errorf("BEGIN and a script: %d %s", code, raw)
	}
	o.record(60, fmt.Errorf("refused"))
	o.record(61, fmt.Errorf("refused"))
	code, r, raw = call(t, cl, base(f), "/db/execute?db=h.db&transaction", `[["INSERT INTO t (id) VALUES (?)", 62], "COMMIT", ["INSERT INTO t (id) VALUES (?)", 63]]`)
	if code != 200 || len(r.Results) != 2 || !strings.Contains(r.Results[1].Error, "not allowed") || r.Index != 0 {
		t.Errorf("COMMIT inside &transaction: %d %s", code, raw)
	}
	o.record(62, fmt.Errorf("rolled back"))
	o.record(63, fmt.Errorf("never ran"))
	code, r, raw = call(t, cl, base(f), "/db/execute?db=h.db", `["CREATE TEMP TABLE t (id)", "EXPLAIN PRAGMA query_only=1"]`)
	if code != 200 || r.Results[0].Error != "" {
		t.Errorf("a TEMP table: %d %s", code, raw)
	}
	for k := range 4 { // every pooled connection: none is read-only, in a transaction, or has a TEMP t
		code, r, raw = call(t, cl, base(f), "/db/execute?db=h.db", fmt.Sprintf(`[["INSERT INTO t (id) VALUES (?)", %d]]`, 70+k))
		if code != 200 || r.Results[0].Error != "" || r.Index == 0 {
			t.Errorf("a write after those: %d %s", code, raw)
		}
		o.record(int64(70+k), nil)
	}
	code, r, raw = call(t, cl, base(f), "/db/query?db=h.db", `["SELECT 1e999, -1e999"]`)
	if code != 200 || !strings.Contains(raw, `[["+Inf","-Inf"]]`) {
		t.Errorf("infinities: %d %s", code, raw)
	}
	// What a web page could make a browser send: a form POST, or a
	// request for another host name resolving to 127.0.0.1.
	resp, err := cl.Post(base(f)+"/db/execute?db=h.db", "text/plain", strings.NewReader(`["DELETE FROM t"]`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnsupportedMediaType {
		t.Errorf("a text/plain POST: %s", resp.Status)
	}
	req, _ := http.NewRequest("GET", base(f)+"/status", nil)
	req.Host = "evil.example:80"
	resp, err = cl.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Errorf("a request for another host: %s", resp.Status)
	}

	// /db/query does not write.
	code, r, raw = call(t, cl, base(f), "/db/query?db=h.db", `["DELETE FROM t", "INSERT INTO t (id) VALUES (50) RETURNING id"]`)
	if code != 200 || len(r.Results) != 2 || r.Results[0].Error == "" || r.Results[1].Error == "" {
		t.Errorf("writes through /db/query: %d %s", code, raw)
	}
	o.record(50, fmt.Errorf("refused"))

	// A transaction over MaxTxSize fails at its commit, on the leader.
	code, r, raw = call(t, cl, base(f), "/db/execute?db=h.db", `["INSERT INTO t (id, b) VALUES (40, zeroblob(2000000))"]`)
	if code != 200 || !strings.Contains(r.Results[0].Error, "too large") {
		t.Errorf("too large a transaction: %d %.300s", code, raw)
	}
	o.record(40, fmt.Errorf("too large"))

	// /status, /readyz, /metrics.
	resp, err = cl.Get(base(f) + "/status")
	if err != nil {
		t.Fatal(err)
	}
	var st Status
	err = json.NewDecoder(resp.Body).Decode(&st)
	resp.Body.Close()
	if err != nil || st.ID != c.nodes[f].ID() || st.Role != Voter || st.LeaderID != c.nodes[l].ID() || len(st.Members) != 3 ||
		len(st.Databases) != 1 || st.Databases[0].Name != "h.db" {
		t.Errorf("/status: %v %+v", err, st)
	}
	if code, _, raw := call(t, cl, base(g), "/readyz", ""); code != 200 || !strings.HasPrefix(raw, "ready") {
		t.Errorf("/readyz: %d %s", code, raw)
	}
	metrics := func(i int) string {
		_, _, raw := call(t, cl, base(i), "/metrics", "")
		return raw
	}
	lm, fm, gm := metrics(l), metrics(f), metrics(g)
	for _, want := range []string{`dqlite_commits_total{node="` + fmt.Sprint(l+1) + `"}`, "dqlite_commit_seconds_bucket",
		`dqlite_commit_failures_total{cause="too_large"`, `dqlite_statements_total{node="` + fmt.Sprint(l+1) + `",path="local"}`,
		`dqlite_wal_bytes{database="h.db"`, `dqlite_apply_lag{`, `dqlite_raft_state_changes_total{node="` + fmt.Sprint(l+1) + `",state="Leader"}`} {
		if !strings.Contains(lm, want) {
			t.Errorf("the leader's /metrics lack %s", want)
		}
	}
	if !strings.Contains(fm, `path="forwarded"`) || !strings.Contains(gm, `dqlite_reads_total{level="linearizable"`) {
		t.Errorf("follower metrics: forwarded statements, linearizable reads missing:\n%s\n%s", grepLines(fm, "dqlite_statements"), grepLines(gm, "dqlite_reads"))
	}

	// A node restarted in the process registers its metrics again.
	c.stop(g)
	c.restart(g)
	if m := metrics(g); !strings.Contains(m, "dqlite_apply_lag") {
		t.Errorf("after a restart, /metrics: %.300s", m)
	}
	c.check("h.db", `SELECT id FROM t`, o)
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// TestHTTP_TLS: with Config.TLS the API is served over TLS and refuses a
// client without a certificate the cluster's CA signed.
func TestHTTP_TLS(t *testing.T) {
	_, node, client := testTLSWithClient(t)
	c := newCluster(t, 1, func(cfg *Config) {
		cfg.TLS = node
		cfg.HTTPAddress = "127.0.0.1:0"
	})
	c.waitLeader()
	addr := "https://" + c.nodes[0].HTTPAddress()
	anon := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: client.RootCAs}}}
	if resp, err := anon.Post(addr+"/db/execute", "application/json", bytes.NewBufferString(`["CREATE TABLE t (x)"]`)); err == nil {
		resp.Body.Close()
		t.Errorf("a client without a certificate got %s", resp.Status)
	}
	plain := &http.Client{}
	if resp, err := plain.Get("http://" + c.nodes[0].HTTPAddress() + "/status"); err == nil {
		if resp.StatusCode == 200 {
			t.Errorf("a plaintext client got %s", resp.Status)
		}
		resp.Body.Close()
	}
	authed := &http.Client{Transport: &http.Transport{TLSClientConfig: client}}
	if code, r, raw := call(t, authed, addr, "/db/execute", `["CREATE TABLE t (x)", "INSERT INTO t VALUES (1)"]`); code != 200 ||
		r.Results[1].Error != "" {
		t.Errorf("a client with a certificate: %d %s", code, raw)
	}
	if code, _, raw := call(t, authed, addr, "/db/query?level=linearizable&q=SELECT+x+FROM+t", ""); code != 200 ||
		!strings.Contains(raw, `"values":[[1]]`) {
		t.Errorf("query: %d %s", code, raw)
	}
	o := newOutcome()
	o.record(1, nil)
	c.check(DefaultHTTPDatabase, `SELECT x FROM t`, o)
}
