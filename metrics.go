package dqlite

import (
	"strconv"

	"github.com/hashicorp/raft"

	"github.com/godqlite/dqlite/internal/metrics"
)

// newMetrics returns the node's metrics, or nil when they are off.
func (n *Node) newMetrics() *metrics.Set {
	if n.cfg.Metrics == nil && n.cfg.HTTPAddress == "" && n.cfg.HTTPListener == nil {
		return nil
	}
	return metrics.New(strconv.FormatUint(uint64(n.cfg.ID), 10), n.gauges)
}

// gauges reads the values metrics report at collection time.
func (n *Node) gauges() metrics.Gauges {
	var g metrics.Gauges
	st := n.status(false)
	g.ApplyLag = st.Lag
	for _, d := range st.Databases {
		g.Databases = append(g.Databases, metrics.DatabaseGauge{Name: d.Name, Size: d.Size, WALSize: d.WALSize})
	}
	return g
}

// watchRaftState counts Raft's state changes.
func (n *Node) watchRaftState() {
	if n.metrics == nil {
		return
	}
	ch := make(chan raft.Observation, 16)
	obs := raft.NewObserver(ch, false, func(o *raft.Observation) bool {
		_, ok := o.Data.(raft.RaftState)
		return ok
	})
	n.raft.RegisterObserver(obs)
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		defer n.raft.DeregisterObserver(obs)
		for {
			select {
			case <-n.done:
				return
			case o := <-ch:
				n.metrics.State(o.Data.(raft.RaftState).String())
			}
		}
	}()
}

// stopMetrics unregisters the metrics, so that a node started again in
// the same process can register its own.
func (n *Node) stopMetrics() {
	if n.metrics != nil && n.cfg.Metrics != nil {
		n.cfg.Metrics.Unregister(n.metrics)
	}
}
