package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/godqlite/dqlite/cmd/dqlite-bench/workload"
)

// rqlite is a 3-node rqlite v8 cluster (rqlited on PATH), driven over its
// HTTP API as its clients are.
type rqlite struct {
	nodes  int
	procs  []*exec.Cmd
	http   []string
	raft   []string
	leader string
	client *http.Client
}

const rqliteInstall = "rqlited not found on PATH: build github.com/rqlite/rqlite/v8/cmd/rqlited v8.43.4 (see PEERS.md) to include rqlite"

func (r *rqlite) Name() string { return "rqlite" }

func (r *rqlite) Durability() string {
	return fmt.Sprintf("%d processes; Raft log (BoltDB) fsynced on every commit, quorum of %d; reads level=weak (read), linearizable (linread)", r.nodes, r.nodes/2+1)
}

func (r *rqlite) Start(ctx context.Context, dir string) (workload.Ops, error) {
	bin, err := exec.LookPath("rqlited")
	if err != nil {
		return workload.Ops{}, fmt.Errorf("%w: %s", errNotInstalled, rqliteInstall)
	}
	ports, err := workload.FreePorts(2 * r.nodes)
	if err != nil {
		return workload.Ops{}, err
	}
	r.http, r.raft = ports[:r.nodes], ports[r.nodes:]
	r.client = &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	for i := range r.nodes {
		cmd := exec.Command(bin, "-node-id", fmt.Sprint("n", i+1), "-http-addr", r.http[i], "-raft-addr", r.raft[i],
			"-bootstrap-expect", fmt.Sprint(r.nodes), "-join", strings.Join(r.raft, ","), filepath.Join(dir, fmt.Sprint("rqlite", i+1)))
		dieWithParent(cmd)
		if err := cmd.Start(); err != nil {
			return workload.Ops{}, err
		}
		r.procs = append(r.procs, cmd)
	}
	if err := r.findLeader(ctx); err != nil {
		return workload.Ops{}, err
	}
	if err := r.execute(ctx, false, [][]any{{workload.Schema}}); err != nil {
		return workload.Ops{}, err
	}
	return workload.Ops{
		Insert: func(ctx context.Context, id int64) error {
			return r.execute(ctx, false, [][]any{{`INSERT INTO bench (id, v) VALUES (?, ?)`, id, workload.Value}})
		},
		Batch: func(ctx context.Context, ids []int64) error {
			stmts := make([][]any, len(ids))
			for i, id := range ids {
				stmts[i] = []any{`INSERT INTO bench (id, v) VALUES (?, ?)`, id, workload.Value}
			}
			return r.execute(ctx, true, stmts)
		},
		Read:    func(ctx context.Context, id int64) error { return r.read(ctx, "weak", id) },
		LinRead: func(ctx context.Context, id int64) error { return r.read(ctx, "linearizable", id) },
	}, nil
}

// read selects row id at an rqlite read level.
func (r *rqlite) read(ctx context.Context, level string, id int64) error {
	var res struct {
		Results []struct {
			Values [][]any `json:"values"`
			Error  string  `json:"error"`
		} `json:"results"`
	}
	if err := r.post(ctx, "/db/query?level="+level, [][]any{{`SELECT v FROM bench WHERE id = ?`, id}}, &res); err != nil {
		return err
	}
	if len(res.Results) != 1 || res.Results[0].Error != "" || len(res.Results[0].Values) != 1 {
		return fmt.Errorf("rqlite query: %+v", res)
	}
	return nil
}

// findLeader waits until every node is ready and notes the leader's HTTP
// address (writes sent elsewhere are redirected, which costs a round trip).
func (r *rqlite) findLeader(ctx context.Context) error {
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		ready := 0
		for _, h := range r.http {
			resp, err := r.client.Get("http://" + h + "/readyz")
			if err == nil {
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					ready++
				}
			}
		}
		if ready == r.nodes {
			var st struct {
				Store struct {
					Leader struct {
						Addr string `json:"addr"`
					} `json:"leader"`
				} `json:"store"`
			}
			resp, err := r.client.Get("http://" + r.http[0] + "/status")
			if err == nil {
				json.NewDecoder(resp.Body).Decode(&st)
				resp.Body.Close()
				for i, a := range r.raft {
					if a == st.Store.Leader.Addr {
						r.leader = r.http[i]
						return nil
					}
				}
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	return errors.New("rqlite: no ready leader after 60s")
}

func (r *rqlite) execute(ctx context.Context, tx bool, stmts [][]any) error {
	path := "/db/execute"
	if tx {
		path += "?transaction"
	}
	var res struct {
		Results []struct {
			Error string `json:"error"`
		} `json:"results"`
		Error string `json:"error"`
	}
	if err := r.post(ctx, path, stmts, &res); err != nil {
		return err
	}
	if res.Error != "" {
		return errors.New("rqlite: " + res.Error)
	}
	for _, x := range res.Results {
		if x.Error != "" {
			return errors.New("rqlite: " + x.Error)
		}
	}
	return nil
}

func (r *rqlite) post(ctx context.Context, path string, body any, out any) error {
	b, err := json.Marshal(body)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+r.leader+path, bytes.NewReader(b))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := r.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		err := fmt.Errorf("rqlite %s: %s: %s", path, resp.Status, msg)
		if resp.StatusCode == http.StatusServiceUnavailable {
			err = fmt.Errorf("%w: %v", workload.ErrRetry, err)
		}
		return err
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

func (r *rqlite) Stop() error {
	for _, p := range r.procs {
		p.Process.Signal(syscall.SIGTERM)
	}
	for _, p := range r.procs {
		done := make(chan struct{})
		go func() { p.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			p.Process.Kill()
			<-done
		}
	}
	return nil
}
