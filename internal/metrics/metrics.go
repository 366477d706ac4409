// Package metrics holds a node's Prometheus metrics. A nil *Set records
// nothing, so that the write path calls it unconditionally and costs
// nothing when metrics are off (the default).
package metrics

import (
	"context"
	"errors"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/godqlite/dqlite/internal/errs"
)

// Gauges are the values read when metrics are collected.
type Gauges struct {
	ApplyLag  uint64 // entries committed but not yet applied on this node
	Databases []DatabaseGauge
}

// DatabaseGauge is one database's sizes.
type DatabaseGauge struct {
	Name          string
	Size, WALSize int64
}

// Set is the node's metrics; it is a prometheus.Collector.
type Set struct {
	commits    prometheus.Counter
	failures   *prometheus.CounterVec
	latency    prometheus.Histogram
	statements *prometheus.CounterVec
	reads      *prometheus.CounterVec
	states     *prometheus.CounterVec
	snapDur    prometheus.Histogram
	snapBytes  prometheus.Histogram
	ckptDur    prometheus.Histogram
	ckptFrames prometheus.Histogram
	applyLag   *prometheus.Desc
	walBytes   *prometheus.Desc
	dbBytes    *prometheus.Desc
	gauges     func() Gauges
	counted    []prometheus.Collector
}

// New returns the metrics of node id; gauges is called at each collection.
func New(node string, gauges func() Gauges) *Set {
	l := prometheus.Labels{"node": node}
	opts := func(name, help string) prometheus.Opts {
		return prometheus.Opts{Namespace: "dqlite", Name: name, Help: help, ConstLabels: l}
	}
	hist := func(name, help string, buckets []float64) prometheus.Histogram {
		o := opts(name, help)
		return prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: o.Namespace, Name: o.Name, Help: o.Help,
			ConstLabels: l, Buckets: buckets})
	}
	s := &Set{
		commits: prometheus.NewCounter(prometheus.CounterOpts(opts("commits_total",
			"Write transactions committed through this node's pipeline (as the leader)."))),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts(opts("commit_failures_total",
			"Write transactions that failed to commit on this node, by cause.")), []string{"cause"}),
		latency: hist("commit_seconds", "Time from a transaction's commit frame to Raft's commit of it.",
			prometheus.ExponentialBuckets(0.0005, 2, 16)),
		statements: prometheus.NewCounterVec(prometheus.CounterOpts(opts("statements_total",
			"Statements this node ran on its copy (local: a client's forwarded statement counts on the leader too) or sent to the leader (forwarded).")), []string{"path"}),
		reads: prometheus.NewCounterVec(prometheus.CounterOpts(opts("reads_total",
			"Read statements and read transactions on this node's copy, by read level.")), []string{"level"}),
		states: prometheus.NewCounterVec(prometheus.CounterOpts(opts("raft_state_changes_total",
			"Raft state changes of this node, by the state entered.")), []string{"state"}),
		snapDur: hist("snapshot_seconds", "Time to persist a snapshot.", prometheus.ExponentialBuckets(0.001, 2, 16)),
		snapBytes: hist("snapshot_bytes", "Bytes of pages a snapshot persisted (the pages changed since the previous one).",
			prometheus.ExponentialBuckets(4096, 4, 12)),
		ckptDur: hist("checkpoint_seconds", "Time a checkpoint took.", prometheus.ExponentialBuckets(0.0005, 2, 16)),
		ckptFrames: hist("checkpoint_frames", "WAL frames a checkpoint copied into the database file.",
			prometheus.ExponentialBuckets(16, 2, 12)),
		applyLag: prometheus.NewDesc("dqlite_apply_lag", "Raft entries this node knows committed but has not applied.",
			nil, l),
		walBytes: prometheus.NewDesc("dqlite_wal_bytes", "Size of a database's WAL file.", []string{"database"}, l),
		dbBytes:  prometheus.NewDesc("dqlite_database_bytes", "Size of a database's file.", []string{"database"}, l),
		gauges:   gauges,
	}
	s.counted = []prometheus.Collector{s.commits, s.failures, s.latency, s.statements, s.reads, s.states,
		s.snapDur, s.snapBytes, s.ckptDur, s.ckptFrames}
	return s
}

// Describe implements prometheus.Collector.
func (s *Set) Describe(ch chan<- *prometheus.Desc) {
	for _, c := range s.counted {
		c.Describe(ch)
	}
	ch <- s.applyLag
	ch <- s.walBytes
	ch <- s.dbBytes
}

// Collect implements prometheus.Collector.
func (s *Set) Collect(ch chan<- prometheus.Metric) {
	for _, c := range s.counted {
		c.Collect(ch)
	}
	g := s.gauges()
	ch <- prometheus.MustNewConstMetric(s.applyLag, prometheus.GaugeValue, float64(g.ApplyLag))
	for _, d := range g.Databases {
		ch <- prometheus.MustNewConstMetric(s.walBytes, prometheus.GaugeValue, float64(d.WALSize), d.Name)
		ch <- prometheus.MustNewConstMetric(s.dbBytes, prometheus.GaugeValue, float64(d.Size), d.Name)
	}
}

// Commit records the end of a local write transaction that began its
// commit at start: committed (err nil) or failed.
func (s *Set) Commit(start time.Time, err error) {
	if s == nil {
		return
	}
	if err != nil {
		s.Failure(err)
		return
	}
	s.commits.Inc()
	s.latency.Observe(time.Since(start).Seconds())
}

// Failure counts a commit that failed with err.
func (s *Set) Failure(err error) {
	if s == nil {
		return
	}
	s.failures.WithLabelValues(Cause(err)).Inc()
}

// Cause names the cause of a failed commit, for the failures' label.
func Cause(err error) string {
	switch {
	case errors.Is(err, errs.ErrNotLeader):
		return "not_leader"
	case errors.Is(err, errs.ErrLeadershipLost):
		return "leadership_lost"
	case errors.Is(err, errs.ErrNoQuorum), errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	case errors.Is(err, errs.ErrTxTooLarge):
		return "too_large"
	case errors.Is(err, errs.ErrClosed):
		return "closed"
	case errors.Is(err, errs.ErrDiverged):
		return "diverged"
	}
	return "other"
}

// Statement counts a statement run locally or forwarded to the leader.
func (s *Set) Statement(forwarded bool) {
	if s == nil {
		return
	}
	path := "local"
	if forwarded {
		path = "forwarded"
	}
	s.statements.WithLabelValues(path).Inc()
}

// Read counts a read served at level.
func (s *Set) Read(level string) {
	if s == nil {
		return
	}
	s.reads.WithLabelValues(level).Inc()
}

// State counts a Raft state change into state.
func (s *Set) State(state string) {
	if s == nil {
		return
	}
	s.states.WithLabelValues(state).Inc()
}

// Snapshot records a persisted snapshot.
func (s *Set) Snapshot(took time.Duration, bytes int64) {
	if s == nil {
		return
	}
	s.snapDur.Observe(took.Seconds())
	s.snapBytes.Observe(float64(bytes))
}

// Checkpoint records a checkpoint that copied frames.
func (s *Set) Checkpoint(took time.Duration, frames int) {
	if s == nil {
		return
	}
	s.ckptDur.Observe(took.Seconds())
	s.ckptFrames.Observe(float64(frames))
}
