package dqlite

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
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
// old configuration: a new node joins afterwards, with AddVoter. At most two
// members: with three or more, any two could elect one of themselves
// without the survivor that holds the latest writes. With more survivors,
// recover the one whose log is the most recent (the highest last term,
// then index: Inspect says) and one other, then add the rest as new nodes
// with empty directories. cfg needs Dir; ID, when zero, is the one the
// directory records; TLS and Dial, when set, are used to reach the old
// members.
//
// Recover marks the directory while it works: a node does not start from
// a directory whose recovery was interrupted (ErrNeedsRecovery); run
// Recover again, with the same members.
//
// Recover refuses, with ErrNotRecoverable, when the directory's node is
// still part of a cluster that works: a member of the old configuration
// answers and knows a leader, or a quorum of it answers.
func Recover(ctx context.Context, cfg Config, members []Peer) error {
	if cfg.Dir == "" {
		return errors.New("dqlite: Recover needs the data directory")
	}
	if err := hasRaftState(cfg.Dir); err != nil {
		return fmt.Errorf("%w: %w", ErrNotRecoverable, err)
	}
	lock, err := lockDir(cfg.Dir)
	if err != nil {
		return fmt.Errorf("%w: %w (stop the node first)", ErrNotRecoverable, err)
	}
	defer lock.Close()
	id, mark, err := readLock(lock)
	if err != nil {
		return err
	}
	if cfg.ID == 0 {
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
	if len(members) > 2 {
		return fmt.Errorf("%w: %d members: recover at most two survivors (with three or more, two of them could elect "+
			"a leader without the one holding the latest writes); recover the survivor whose log is the most recent "+
			"(the highest last term, then index: dqlite recover -show) and one other, then add the others as new nodes "+
			"with empty directories", ErrNotRecoverable, len(members))
	}
	cfg.Cluster = members
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("%w: %w", ErrNotRecoverable, err)
	}
	cfg = cfg.withDefaults()
	if err := checkNodeID(lock, cfg.ID, true); err != nil {
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
	// A recovery that was interrupted is run again as it began: its checks
	// passed then, and what it wrote since (the new membership, if it got
	// that far) must not make them fail now.
	want := memberList(members)
	if mark != "" {
		if mark != want {
			return fmt.Errorf("%w: the interrupted recovery of %s was for members %s: run it again with those",
				ErrNotRecoverable, cfg.Dir, mark)
		}
		cfg.Logger.Warn("resuming an interrupted recovery", "members", mark)
		return recoverDir(cfg, lock, store, snaps, members)
	}
	oldVoters := map[NodeID]string{}
	for _, s := range old.Servers {
		if s.Suffrage == raft.Voter {
			oldVoters[nodeID(s.ID)] = string(s.Address)
		}
	}
	for _, p := range members {
		if _, ok := oldVoters[p.ID]; !ok {
			return fmt.Errorf("%w: node %d was no voter of the cluster (%s); recover the survivors only, then add new nodes",
				ErrNotRecoverable, p.ID, memberList(peers(old)))
		}
	}
	if err := checkLost(ctx, cfg, oldVoters); err != nil {
		return err
	}
	return recoverDir(cfg, lock, store, snaps, members)
}

// recoverDir does the recovery, once Recover checked it may.
func recoverDir(cfg Config, lock *os.File, store logStore, snaps *fsm.Store, members []Peer) error {
	// From here on the files may hold entries the cluster never
	// committed: a node must not start from them until the snapshot holds
	// them and the log is gone.
	if err := writeLock(lock, cfg.ID, memberList(members)); err != nil {
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
		// As on every node, an entry the FSM refuses (one built in another
		// term, say) is skipped: Raft ignores Apply's answer.
		f.Apply(&l)
		lastIndex, lastTerm = l.Index, l.Term
	}
	for _, d := range f.Databases() {
		if err := d.Failed(); err != nil {
			return fmt.Errorf("database %s: %w: it cannot take the log's entries; the recovery is not complete "+
				"(the node will not start): remove the cause, then run it again", d.Name, err)
		}
	}
	f.Replayed(lastIndex)

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
	if err := writeLock(lock, cfg.ID, ""); err != nil {
		return err
	}
	cfg.Logger.Warn("recovered: the node is a member of a new cluster", "members", memberList(members),
		"index", lastIndex, "term", lastTerm)
	return nil
}

// DirState is what a stopped node's data directory holds: its node's ID,
// the index and term of the last entry of its Raft log (or of its
// snapshot), and the membership it last knew.
type DirState struct {
	ID                  NodeID
	LastIndex, LastTerm uint64
	Members             []Peer
}

// Inspect reads a stopped node's data directory. Of survivors to recover,
// the one with the highest LastTerm, then LastIndex, holds every
// transaction the old cluster committed that any of them holds.
func Inspect(dir string) (DirState, error) {
	var st DirState
	if err := hasRaftState(dir); err != nil {
		return st, err
	}
	lock, err := lockDir(dir)
	if err != nil {
		return st, fmt.Errorf("%w (stop the node first)", err)
	}
	defer lock.Close()
	if st.ID, _, err = readLock(lock); err != nil {
		return st, err
	}
	cfg := DefaultConfig()
	cfg.Dir = dir
	store, err := openLogStore(cfg, newHclog(cfg.Logger))
	if err != nil {
		return st, err
	}
	defer store.Close()
	snaps, err := fsm.OpenStore(filepath.Join(dir, "snapshots"), cfg.Logger, cfg.SnapshotRate)
	if err != nil {
		return st, fmt.Errorf("snapshot store: %w", err)
	}
	if latest, ok := snaps.Latest(); ok {
		st.LastIndex, st.LastTerm = latest.Raft.Index, latest.Raft.Term
	}
	last, err := store.LastIndex()
	if err != nil {
		return st, err
	}
	if last > st.LastIndex {
		var l raft.Log
		if err := store.GetLog(last, &l); err != nil {
			return st, fmt.Errorf("read log entry %d: %w", last, err)
		}
		st.LastIndex, st.LastTerm = l.Index, l.Term
	}
	conf, err := latestConfiguration(store, snaps)
	if err != nil {
		return st, err
	}
	st.Members = peers(conf)
	return st, nil
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
// answers and knows a leader, or a quorum of voters (this one counted) is
// up. A member counts as gone only when nothing accepts a connection at its
// address: one that accepts but does not answer the status request (a TLS
// handshake refused, another version) is up, and may be deciding.
func checkLost(ctx context.Context, cfg Config, voters map[NodeID]string) error {
	dial := driver.OrTCP(cfg.Dial)
	statusDial := dial
	if cfg.TLS != nil {
		statusDial = driver.DialTLS(dial, cfg.TLS)
	}
	up := 1
	var seen []string
	for id, addr := range voters {
		if id == cfg.ID {
			continue
		}
		pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		nc, err := dial(pctx, addr)
		if err != nil {
			cancel()
			seen = append(seen, fmt.Sprintf("node %d (%s): unreachable (%v)", id, addr, err))
			continue
		}
		nc.Close()
		up++
		st, err := driver.RemoteStatus(pctx, statusDial, addr)
		cancel()
		if err != nil {
			seen = append(seen, fmt.Sprintf("node %d (%s): accepts connections but did not answer (%v; if the cluster uses TLS, give its settings)", id, addr, err))
			continue
		}
		if st.LeaderAddress != "" {
			return fmt.Errorf("%w: node %d (%s) is running and follows leader %d (%s): the cluster works; "+
				"change its members with the shell (.remove, .add) instead", ErrNotRecoverable, id, addr, st.LeaderID, st.LeaderAddress)
		}
		seen = append(seen, fmt.Sprintf("node %d (%s): running, no leader", id, addr))
	}
	if up > len(voters)/2 {
		return fmt.Errorf("%w: %d of the %d voters are up (this one and %s), a quorum: they can elect a leader; "+
			"wait for it, or stop them for good first", ErrNotRecoverable, up, len(voters), strings.Join(seen, "; "))
	}
	cfg.Logger.Info("recovering: the old cluster has no quorum", "voters", len(voters), "seen", strings.Join(seen, "; "))
	return nil
}

// hasRaftState fails, touching nothing, for a directory that holds no
// Raft log.
func hasRaftState(dir string) error {
	if _, err := os.Stat(dir); err != nil {
		return fmt.Errorf("dqlite: data directory: %w", err)
	}
	for _, name := range []string{"raft-wal", "raft.db"} {
		if _, err := os.Stat(filepath.Join(dir, name)); err == nil {
			return nil
		}
	}
	return fmt.Errorf("dqlite: %s holds no Raft log: it is no node's data directory", dir)
}

// memberList is members as the lock file records them: ID=address,…
// by ID.
func memberList(members []Peer) string {
	ps := slices.Clone(members)
	slices.SortFunc(ps, func(a, b Peer) int { return cmp.Compare(a.ID, b.ID) })
	var l []string
	for _, p := range ps {
		l = append(l, fmt.Sprintf("%d=%s", p.ID, p.Address))
	}
	return strings.Join(l, ",")
}

// The data directory records its node's ID in its lock file, so that a
// directory is never started as another node, and, while Recover works,
// the members it recovers for. The lock file is the node's own name (no
// database can be called "lock"), and only the holder of its lock reads or
// writes it: its text is the ID on a line, then "recovering" and the
// members on another while a recovery is under way.

// readLock returns what the locked lock file records: an ID (0 if none),
// and the members of an interrupted recovery ("" if none).
func readLock(lock *os.File) (NodeID, string, error) {
	b := make([]byte, 64<<10)
	n, err := lock.ReadAt(b, 0)
	if err != nil && !errors.Is(err, io.EOF) {
		return 0, "", fmt.Errorf("data dir: %w", err)
	}
	f := strings.Fields(string(b[:n]))
	if len(f) == 0 {
		return 0, "", nil
	}
	id, err := strconv.ParseUint(f[0], 10, 64)
	if err != nil || id == 0 || len(f) != 1 && (len(f) != 3 || f[1] != "recovering") {
		return 0, "", fmt.Errorf("%w: the lock file of %s does not hold a node ID (%.100q); "+
			"if this is the directory of the node you are starting, empty the file", ErrNeedsRecovery, filepath.Dir(lock.Name()), b[:n])
	}
	if len(f) == 3 {
		return NodeID(id), f[2], nil
	}
	return NodeID(id), "", nil
}

// writeLock records id, and the members of a recovery under way ("" for
// none).
func writeLock(lock *os.File, id NodeID, recovering string) error {
	text := strconv.FormatUint(uint64(id), 10) + "\n"
	if recovering != "" {
		text += "recovering " + recovering + "\n"
	}
	if _, err := lock.WriteAt([]byte(text), 0); err != nil {
		return fmt.Errorf("data dir: %w", err)
	}
	if err := lock.Truncate(int64(len(text))); err != nil {
		return fmt.Errorf("data dir: %w", err)
	}
	if err := lock.Sync(); err != nil {
		return fmt.Errorf("data dir: %w", err)
	}
	return nil
}

// checkNodeID fails when the directory of the locked lock file belongs to
// another node, or (unless recovering) when a recovery of it was
// interrupted; it records id when the file records none.
func checkNodeID(lock *os.File, id NodeID, recovering bool) error {
	have, mark, err := readLock(lock)
	if err != nil {
		return err
	}
	if have != 0 && have != id {
		return fmt.Errorf("%w: data directory %s belongs to node %d, not %d", ErrIDClash, filepath.Dir(lock.Name()), have, id)
	}
	if mark != "" && !recovering {
		return fmt.Errorf("%w: the recovery of %s (dqlite recover, Recover) was interrupted, and its databases may hold "+
			"transactions the cluster never committed: run it again, with the same members (%s), then start the node",
			ErrNeedsRecovery, filepath.Dir(lock.Name()), mark)
	}
	if have == 0 {
		return writeLock(lock, id, "")
	}
	return nil
}
