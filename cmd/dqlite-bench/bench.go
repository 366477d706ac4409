package main

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Workload is one measurement: a kind of operation, run by Clients
// goroutines for Duration.
type Workload struct {
	Kind     string        `json:"kind"` // insert, batch or read
	Clients  int           `json:"clients"`
	Duration time.Duration `json:"duration"`
}

func (w Workload) String() string { return fmt.Sprintf("%s/%d", w.Kind, w.Clients) }

// rowsPerOp is how many rows one operation of a workload writes or reads.
func (w Workload) rowsPerOp() int {
	if w.Kind == "batch" {
		return batchRows
	}
	return 1
}

const (
	batchRows = 100   // rows per batch transaction
	readRows  = 10000 // rows the read workload selects from
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
}

// errRetry marks an operation that the system refused for now (a busy
// database, no leader yet): it is retried and counted.
var errRetry = errors.New("retry")

// Ops are the operations of one system. Each must be safe for concurrent
// use by the workload's clients. ids are unique across calls.
type Ops struct {
	Insert func(ctx context.Context, id int64) error
	Batch  func(ctx context.Context, ids []int64) error
	Read   func(ctx context.Context, id int64) error
}

// run measures workload w over ops. nextID hands out fresh row IDs.
func run(ctx context.Context, w Workload, ops Ops, nextID *atomic.Int64) Result {
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
					if !errors.Is(err, errRetry) || ctx.Err() != nil {
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
		ids := make([]int64, batchRows)
		for i := range ids {
			ids[i] = nextID.Add(1)
		}
		return ops.Batch(ctx, ids)
	case "read":
		return ops.Read(ctx, 1+rand.Int64N(readRows))
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
func prefill(ctx context.Context, ops Ops, nextID *atomic.Int64) error {
	for nextID.Load() < readRows {
		ids := make([]int64, 0, batchRows)
		for range batchRows {
			ids = append(ids, nextID.Add(1))
		}
		var err error
		for {
			if err = ops.Batch(ctx, ids); !errors.Is(err, errRetry) {
				break
			}
		}
		if err != nil {
			return fmt.Errorf("prefill: %w", err)
		}
	}
	return nil
}
