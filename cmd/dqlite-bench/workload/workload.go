// Package workload is the benchmark's measurement: workloads, the runner
// and its results, and the database/sql operations. It imports no SQLite
// binding, so that a peer's client program, built in its own module, can
// use it beside that peer's driver.
package workload

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Workload is one measurement: a kind of operation, run by Clients
// goroutines for Duration.
type Workload struct {
	Kind     string        `json:"kind"` // insert, batch, read or linread
	Clients  int           `json:"clients"`
	Duration time.Duration `json:"duration"`
}

func (w Workload) String() string { return fmt.Sprintf("%s/%d", w.Kind, w.Clients) }

// rowsPerOp is how many rows one operation of a workload writes or reads.
func (w Workload) rowsPerOp() int {
	if w.Kind == "batch" {
		return BatchRows
	}
	return 1
}

const (
	BatchRows = 100   // rows per batch transaction
	ReadRows  = 10000 // rows the read workload selects from
)

// Result is what a workload measured.
type Result struct {
	Workload string  `json:"workload"`
	Ops      int64   `json:"ops"`
	OpsPerS  float64 `json:"ops_per_s"`
	RowsPerS float64 `json:"rows_per_s"`
	P50Ms    float64 `json:"p50_ms"`
	P99Ms    float64 `json:"p99_ms"`
	Errors   int64   `json:"errors"`
	Retries  int64   `json:"retries"`
	// Unsupported: the system has no such operation (a linearizable
	// read); nothing was measured.
	Unsupported bool `json:"unsupported,omitempty"`
}

// ErrRetry marks an operation that the system refused for now (a busy
// database, no leader yet): it is retried and counted.
var ErrRetry = errors.New("retry")

// Ops are the operations of one system. Each must be safe for concurrent
// use by the workload's clients. ids are unique across calls.
type Ops struct {
	Insert func(ctx context.Context, id int64) error
	Batch  func(ctx context.Context, ids []int64) error
	Read   func(ctx context.Context, id int64) error
	// LinRead is a linearizable read (nil where the system has none).
	LinRead func(ctx context.Context, id int64) error
}

// run measures workload w over ops. nextID hands out fresh row IDs.
func Run(ctx context.Context, w Workload, ops Ops, nextID *atomic.Int64) Result {
	if w.Kind == "linread" && ops.LinRead == nil {
		return Result{Workload: w.String(), Unsupported: true}
	}
	ctx, cancel := context.WithTimeout(ctx, w.Duration)
	defer cancel()
	var (
		mu        sync.Mutex
		latencies []time.Duration
		errs      atomic.Int64
		retries   atomic.Int64
		wg        sync.WaitGroup
	)
	start := time.Now()
	for range w.Clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var mine []time.Duration
			for ctx.Err() == nil {
				t0 := time.Now()
				var err error
				for {
					err = do(ctx, w.Kind, ops, nextID)
					if !errors.Is(err, ErrRetry) || ctx.Err() != nil {
						break
					}
					retries.Add(1)
				}
				if ctx.Err() != nil {
					break // cut off by the end of the run: not counted
				}
				if err != nil {
					errs.Add(1)
					continue
				}
				mine = append(mine, time.Since(t0))
			}
			mu.Lock()
			latencies = append(latencies, mine...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	elapsed := time.Since(start).Seconds()
	slices.Sort(latencies)
	r := Result{Workload: w.String(), Ops: int64(len(latencies)), Errors: errs.Load(), Retries: retries.Load()}
	r.OpsPerS = float64(r.Ops) / elapsed
	r.RowsPerS = r.OpsPerS * float64(w.rowsPerOp())
	r.P50Ms = ms(percentile(latencies, 0.50))
	r.P99Ms = ms(percentile(latencies, 0.99))
	return r
}

func do(ctx context.Context, kind string, ops Ops, nextID *atomic.Int64) error {
	switch kind {
	case "insert":
		return ops.Insert(ctx, nextID.Add(1))
	case "batch":
		ids := make([]int64, BatchRows)
		for i := range ids {
			ids[i] = nextID.Add(1)
		}
		return ops.Batch(ctx, ids)
	case "read":
		return ops.Read(ctx, 1+rand.Int64N(ReadRows))
	case "linread":
		return ops.LinRead(ctx, 1+rand.Int64N(ReadRows))
	}
	return fmt.Errorf("unknown workload %q", kind)
}

func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[min(len(sorted)-1, int(float64(len(sorted))*p))]
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// prefill inserts the rows the read workload selects, in batches.
func Prefill(ctx context.Context, ops Ops, nextID *atomic.Int64) error {
	for nextID.Load() < ReadRows {
		ids := make([]int64, 0, BatchRows)
		for range BatchRows {
			ids = append(ids, nextID.Add(1))
		}
		var err error
		for {
			if err = ops.Batch(ctx, ids); !errors.Is(err, ErrRetry) {
				break
			}
		}
		if err != nil {
			return fmt.Errorf("prefill: %w", err)
		}
	}
	return nil
}

// Command is what the benchmark sends an agent process, one JSON line
// each: an agent runs workloads next to the database (this project's
// leader, embedding the library) or with a driver the benchmark cannot
// link (a peer's client).
type Command struct {
	Cmd      string   `json:"cmd"` // leader, prepare, run
	Workload Workload `json:"workload"`
}

// Reply is an agent's answer to a Command.
type Reply struct {
	Leader bool   `json:"leader"`
	Result Result `json:"result"`
	Err    string `json:"err,omitempty"`
}

// Serve answers commands from in on out until in ends: prepare calls
// prepare (which returns the operations), run runs a workload, leader
// calls leader. Row IDs continue from the largest one in the table.
func Serve(in io.Reader, out io.Writer, leader func() bool, prepare func(ctx context.Context) (Ops, func(ctx context.Context) (int64, error), error)) error {
	ctx := context.Background()
	var ops *Ops
	var maxID func(ctx context.Context) (int64, error)
	var nextID atomic.Int64
	enc := json.NewEncoder(out)
	sc := bufio.NewScanner(in)
	for sc.Scan() {
		var c Command
		var r Reply
		if err := json.Unmarshal(sc.Bytes(), &c); err != nil {
			return err
		}
		var err error
		switch c.Cmd {
		case "leader":
			r.Leader = leader()
		case "prepare":
			var o Ops
			if o, maxID, err = prepare(ctx); err == nil {
				ops = &o
				var id int64
				if id, err = maxID(ctx); err == nil { // another agent may have filled the table
					nextID.Store(id)
					err = Prefill(ctx, o, &nextID)
				}
			}
		case "run":
			if ops == nil {
				err = errors.New("not prepared")
				break
			}
			var id int64
			if id, err = maxID(ctx); err == nil {
				nextID.Store(id)
				r.Result = Run(ctx, c.Workload, *ops, &nextID)
			}
		default:
			err = fmt.Errorf("unknown command %q", c.Cmd)
		}
		if err != nil {
			r.Err = err.Error()
		}
		if err := enc.Encode(r); err != nil {
			return err
		}
	}
	return sc.Err()
}
