package dqlite

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/raft"

	"github.com/godqlite/dqlite/driver"
	"github.com/godqlite/dqlite/internal/fsm"
)

// Recover makes the node whose data directory is cfg.Dir a member of a new
// cluster of members, for when the cluster lost a majority of its voters
// for good and can elect no leader. Run it, with the same members, on
// every survivor while its node is stopped, then start them: they elect a
// leader among themselves, and fresh nodes can then be added (AddVoter).
//
// Each survivor keeps every entry of its Raft log, committed or not: Recover
// applies them all to its databases and folds them into a snapshot that
// holds the new membership, and empties the log. The survivor whose log is
// the most up to date (the highest last term, then index) is the one that
// can win the first election, and it holds every transaction committed by
// the old cluster that any survivor holds; the others take its state.
//
// members must include this node, and every member must be a voter of the
// old configuration: a new node joins afterwards, with AddVoter. cfg needs
// Dir; ID, when zero, is the one the directory records; TLS and Dial, when
// set, are used to reach the old members.
//
// Recover refuses, with ErrNotRecoverable, when the directory's node is
// still part of a cluster that works: a member of the old configuration
// answers and knows a leader, or a quorum of it answers.
func Recover(ctx context.Context, cfg Config, members []Peer) error {
	if cfg.Dir == "" {
		return errors.New("dqlite: Recover needs the data directory")
	}
	if _, err := os.Stat(cfg.Dir); err != nil {
		return fmt.Errorf("dqlite: data directory: %w", err)
	}
	lock, err := lockDir(cfg.Dir)
	if err != nil {
		return fmt.Errorf("%w: %w (stop the node first)", ErrNotRecoverable, err)
	}
	defer lock.Close()
	if cfg.ID == 0 {
		id, err := readNodeID(lock)
		if err != nil {
			return err
		}
		if id == 0 {
			return fmt.Errorf("%w: %s does not record its node's ID: give it", ErrNotRecoverable, cfg.Dir)
		}
		cfg.ID = id
	}
	for _, p := range members {
		if p.ID == cfg.ID {
			cfg.Address = p.Address
		}
	}
	cfg.Cluster = members
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("%w: %w", ErrNotRecoverable, err)
	}
	cfg = cfg.withDefaults()
	if err := checkNodeID(lock, cfg.ID); err != nil {
		return err
	}

	hlog := newHclog(cfg.Logger)
	store, err := openLogStore(cfg, hlog)
	if err != nil {
		return err
	}
	defer store.Close()
	snaps, err := fsm.OpenStore(filepath.Join(cfg.Dir, "snapshots"), cfg.Logger, cfg.SnapshotRate)
	if err != nil {
		return fmt.Errorf("snapshot store: %w", err)
	}
	if ok, err := raft.HasExistingState(store, store, snaps); err != nil {
		return err
	} else if !ok {
		return fmt.Errorf("%w: %s holds no Raft state: nothing to recover", ErrNotRecoverable, cfg.Dir)
	}
	old, err := latestConfiguration(store, snaps)
	if err != nil {
		return err
	}
	oldVoters := map[NodeID]string{}
	for _, s := range old.Servers {
		id, _ := strconv.ParseUint(string(s.ID), 10, 64)
		if s.Suffrage == raft.Voter {
			oldVoters[NodeID(id)] = string(s.Address)
		}
	}
	for _, p := range members {
		if _, ok := oldVoters[p.ID]; !ok {
			return fmt.Errorf("%w: node %d was no voter of the cluster (%s); recover the survivors only, then add new nodes",
				ErrNotRecoverable, p.ID, describe(old))
		}
	}
	if err := checkLost(ctx, cfg, oldVoters); err != nil {
		return err
	}

	f, err := fsm.New(cfg.Dir, fsm.Options{
		NodeID: uint64(cfg.ID), MaxTxSize: cfg.MaxTxSize, CheckpointFrames: uint32(cfg.CheckpointFrames),
		Logger: cfg.Logger, SnapshotIndex: snaps.LatestIndex,
		Propose:    func([]byte) error { return ErrNotLeader },
		CheckWrite: func() error { return ErrNotLeader },
		Unready:    func() {},
		Term:       func() uint64 { return 0 },
		DiskError:  func(error) {},
	})
	if err != nil {
		return fmt.Errorf("databases: %w", err)
	}
	defer f.Close()
	n := &Node{cfg: cfg, fsm: f}
	rebuild, err := n.checkFiles(snaps)
	if err != nil {
		return err
	}
	var lastIndex, lastTerm uint64
	if latest, ok := snaps.Latest(); ok {
		lastIndex, lastTerm = latest.Raft.Index, latest.Raft.Term
		if rebuild {
			_, rc, err := snaps.Open(latest.Raft.ID)
			if err != nil {
				return fmt.Errorf("open snapshot: %w", err)
			}
			err = f.Restore(rc)
			rc.Close()
			if err != nil {
				return fmt.Errorf("restore snapshot: %w", err)
			}
		}
	}
	// Every entry after the snapshot, committed or not.
	first, err := store.FirstIndex()
	if err != nil {
		return err
	}
	last, err := store.LastIndex()
	if err != nil {
		return err
	}
	for i := max(lastIndex+1, first); i <= last && i > 0; i++ {
		var l raft.Log
		if err := store.GetLog(i, &l); err != nil {
			return fmt.Errorf("read log entry %d: %w", i, err)
		}
		if resp := f.Apply(&l); resp != nil {
			if err, ok := resp.(error); ok {
				return fmt.Errorf("apply log entry %d: %w", i, err)
			}
		}
		lastIndex, lastTerm = l.Index, l.Term
	}

	conf := configuration(members)
	snap, err := f.Snapshot()
	if err != nil {
		return fmt.Errorf("snapshot: %w", err)
	}
	sink, err := snaps.Create(raft.SnapshotVersionMax, lastIndex, lastTerm, conf, 1, nil)
	if err != nil {
		snap.Release()
		return fmt.Errorf("snapshot: %w", err)
	}
	err = snap.Persist(sink)
	snap.Release()
	if err != nil {
		return fmt.Errorf("snapshot: %w", err)
	}
	if err := sink.Close(); err != nil {
		return fmt.Errorf("snapshot: %w", err)
	}
	// The log's old configuration entries must not come back: the
	// snapshot holds everything now.
	if last > 0 {
		if err := store.DeleteRange(first, last); err != nil {
			return fmt.Errorf("empty the Raft log: %w", err)
		}
	}
	cfg.Logger.Warn("recovered: the node is a member of a new cluster", "members", describe(conf),
		"index", lastIndex, "term", lastTerm)
	return nil
}

// latestConfiguration returns the cluster's last configuration that the
// snapshot store and the log hold.
func latestConfiguration(store logStore, snaps *fsm.Store) (raft.Configuration, error) {
	var conf raft.Configuration
	var from uint64
	if latest, ok := snaps.Latest(); ok {
		conf, from = latest.Raft.Configuration, latest.Raft.Index
	}
	first, err := store.FirstIndex()
	if err != nil {
		return conf, err
	}
	last, err := store.LastIndex()
	if err != nil {
		return conf, err
	}
	for i := max(from+1, first); i <= last && i > 0; i++ {
		var l raft.Log
		if err := store.GetLog(i, &l); err != nil {
			return conf, fmt.Errorf("read log entry %d: %w", i, err)
		}
		if l.Type == raft.LogConfiguration {
			conf = raft.DecodeConfiguration(l.Data)
		}
	}
	return conf, nil
}

// checkLost refuses to recover while the old cluster works: a member
// answers and knows a leader, or a quorum of voters (this one counted)
// answers.
func checkLost(ctx context.Context, cfg Config, voters map[NodeID]string) error {
	dial := cfg.Dial
	if cfg.TLS != nil {
		dial = driver.DialTLS(dial, cfg.TLS)
	}
	up := 1
	var seen []string
	for id, addr := range voters {
		if id == cfg.ID {
			continue
		}
		pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		st, err := driver.RemoteStatus(pctx, dial, addr)
		cancel()
		if err != nil {
			seen = append(seen, fmt.Sprintf("node %d (%s): unreachable", id, addr))
			continue
		}
		up++
		if st.LeaderAddress != "" {
			return fmt.Errorf("%w: node %d (%s) is running and follows leader %d (%s): the cluster works; "+
				"change its members with the shell (.remove, .add) instead", ErrNotRecoverable, id, addr, st.LeaderID, st.LeaderAddress)
		}
		seen = append(seen, fmt.Sprintf("node %d (%s): running, no leader", id, addr))
	}
	if up > len(voters)/2 {
		return fmt.Errorf("%w: %d of the %d voters are up (%s), a quorum: they can elect a leader; wait for it",
			ErrNotRecoverable, up, len(voters), strings.Join(seen, "; "))
	}
	return nil
}

func describe(c raft.Configuration) string {
	var s []string
	for _, srv := range c.Servers {
		s = append(s, fmt.Sprintf("%s=%s", srv.ID, srv.Address))
	}
	return strings.Join(s, ",")
}

// The data directory records its node's ID in its lock file, so that a
// directory is never started as another node. The lock file is the
// node's own name (no database can be called "lock"), and only the
// holder of its lock reads or writes it.

// readNodeID returns the ID that the locked lock file records, or 0.
func readNodeID(lock *os.File) (NodeID, error) {
	b := make([]byte, 32)
	n, err := lock.ReadAt(b, 0)
	if err != nil && !errors.Is(err, io.EOF) {
		return 0, fmt.Errorf("data dir: %w", err)
	}
	text := strings.TrimSpace(string(b[:n]))
	if text == "" {
		return 0, nil
	}
	id, err := strconv.ParseUint(text, 10, 64)
	if err != nil || id == 0 {
		return 0, fmt.Errorf("%w: the lock file of %s does not hold a node ID (%q); "+
			"if this is the directory of the node you are starting, empty the file", ErrNeedsRecovery, lock.Name(), b[:n])
	}
	return NodeID(id), nil
}

// checkNodeID fails when the directory of the locked lock file belongs to
// another node, and records id when it records none.
func checkNodeID(lock *os.File, id NodeID) error {
	have, err := readNodeID(lock)
	if err != nil {
		return err
	}
	if have != 0 && have != id {
		return fmt.Errorf("%w: data directory %s belongs to node %d, not %d", ErrIDClash, filepath.Dir(lock.Name()), have, id)
	}
	if have == 0 {
		if _, err := lock.WriteAt([]byte(strconv.FormatUint(uint64(id), 10)+"\n"), 0); err != nil {
			return fmt.Errorf("data dir: %w", err)
		}
		if err := lock.Sync(); err != nil {
			return fmt.Errorf("data dir: %w", err)
		}
	}
	return nil
}
