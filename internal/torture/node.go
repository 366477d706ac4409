package torture

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/ncruces/go-sqlite3"

	"github.com/godqlite/dqlite"
	"github.com/godqlite/dqlite/internal/crashpoint"
	"github.com/godqlite/dqlite/internal/faults"
)

// NodeFlag, as the first argument of a binary that calls NodeMain, runs it
// as one node of a torture cluster.
const NodeFlag = "-torture-node"

// nodeConfig is every torture node's configuration: short timeouts, so
// that faults show their effects within seconds, and small snapshot
// thresholds, so that snapshots are taken and installed often.
func nodeConfig(id dqlite.NodeID, l net.Listener, dir, logStore string, nt *Net, logger *slog.Logger) dqlite.Config {
	return dqlite.Config{
		ID: id, Address: l.Addr().String(), Listener: nt.Listener(l), Dial: nt.Dial, Dir: dir,
		HeartbeatTimeout: 500 * time.Millisecond, ElectionTimeout: 500 * time.Millisecond,
		LeaderLeaseTimeout: 250 * time.Millisecond, ApplyTimeout: 3 * time.Second,
		OpenTimeout: 5 * time.Second, BusyTimeout: 3 * time.Second,
		SnapshotThreshold: 512, SnapshotInterval: 2 * time.Second, TrailingLogs: 128, CheckpointFrames: 200,
		LogStore: logStore, Logger: logger,
	}
}

// node is the node program: a dqlite node and the HTTP endpoint the test
// driver's clients and nemeses use.
type node struct {
	n     *dqlite.Node
	slot  int
	net   *Net
	slots map[string]int

	mu       sync.Mutex
	dbs      map[string]*sql.DB
	faultGen int64 // of the last /fault request applied
}

// NodeMain runs a torture node with args (after NodeFlag) and returns its
// exit code. Its Raft listener is file descriptor 3 and its HTTP listener
// 4, both opened by the driver, so that a restarted node keeps its ports.
// It exits when its standard input closes: the driver has gone.
func NodeMain(args []string) int {
	fs := flag.NewFlagSet("torture-node", flag.ContinueOnError)
	slot := fs.Int("slot", 0, "this node's slot")
	id := fs.Uint64("id", 0, "node ID")
	dir := fs.String("dir", "", "data directory")
	cluster := fs.String("cluster", "", "id=address,... to bootstrap a new cluster with")
	addrs := fs.String("slots", "", "slot=address,... of every slot's Raft address")
	logStore := fs.String("logstore", "bolt", "Raft log store")
	faultGen := fs.Int64("fault-gen", 0, "generation of the driver's faults when this node started: older /fault requests are ignored")
	crash := fs.String("crash", "", "point:n: die at the n-th hit of crash point point (see internal/crashpoint)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	fail := func(err error) int {
		logger.Error("torture node failed", "err", err)
		return 1
	}
	slots := map[string]int{}
	for _, p := range strings.Split(*addrs, ",") {
		s, addr, _ := strings.Cut(p, "=")
		i, err := strconv.Atoi(s)
		if err != nil {
			return fail(fmt.Errorf("bad -slots entry %q", p))
		}
		slots[addr] = i
	}
	if *crash != "" {
		point, n, _ := strings.Cut(*crash, ":")
		after, _ := strconv.Atoi(n)
		if err := crashpoint.Arm(point, after); err != nil {
			return fail(err)
		}
	}
	rl, err := net.FileListener(os.NewFile(3, "raft"))
	if err != nil {
		return fail(err)
	}
	hl, err := net.FileListener(os.NewFile(4, "http"))
	if err != nil {
		return fail(err)
	}
	nt := NewNet(*slot, slots)
	cfg := nodeConfig(dqlite.NodeID(*id), rl, *dir, *logStore, nt, logger)
	if *cluster != "" {
		for _, p := range strings.Split(*cluster, ",") {
			s, addr, _ := strings.Cut(p, "=")
			pid, err := strconv.ParseUint(s, 10, 64)
			if err != nil {
				return fail(fmt.Errorf("bad -cluster entry %q", p))
			}
			cfg.Cluster = append(cfg.Cluster, dqlite.Peer{ID: dqlite.NodeID(pid), Address: addr})
		}
	}
	dn, err := dqlite.New(cfg)
	if err != nil {
		return fail(err)
	}
	nd := &node{n: dn, slot: *slot, net: nt, slots: slots, dbs: map[string]*sql.DB{}, faultGen: *faultGen + 1}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	// Handlers' contexts end with the node, so that none holds up its stop.
	srv := &http.Server{Handler: nd.routes(), ReadHeaderTimeout: 10 * time.Second,
		BaseContext: func(net.Listener) context.Context { return ctx }}
	go srv.Serve(hl)
	logger.Info("torture node up", "slot", *slot, "id", *id, "raft", rl.Addr(), "http", hl.Addr())
	go func() {
		io.Copy(io.Discard, os.Stdin)
		stop()
	}()
	<-ctx.Done()
	faults.Set("", faults.None)
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	srv.Shutdown(sctx)
	nd.mu.Lock()
	for _, db := range nd.dbs {
		db.Close()
	}
	nd.mu.Unlock()
	if err := dn.Close(); err != nil {
		return fail(err)
	}
	return 0
}

// reply is every answer of the endpoint.
type reply struct {
	OK     bool   `json:"ok"`
	Kind   string `json:"kind,omitempty"` // of an error: see classify
	Err    string `json:"err,omitempty"`
	Leader int    `json:"leader,omitempty"` // slot of the leader, for notleader; -1 unknown

	Value  int64   `json:"value,omitempty"`
	Found  bool    `json:"found,omitempty"`
	Values []int64 `json:"values,omitempty"`

	Status *status `json:"status,omitempty"`
	Final  *final  `json:"final,omitempty"`
}

type status struct {
	Slot     int    `json:"slot"`
	ID       uint64 `json:"id"`
	IsLeader bool   `json:"is_leader"`
	Leader   int    `json:"leader"` // slot, -1 unknown
	Disk     string `json:"disk"`
	Members  []dqlite.Peer
}

// final is a node's copy of one database at the end of a run.
type final struct {
	Hash      string  `json:"hash"`
	Integrity string  `json:"integrity"`
	Values    []int64 `json:"values"` // set: every value; bank: balances; register: values by key
}

// Error kinds, as the client must treat them.
const (
	kindNotLeader = "notleader" // nothing happened; the leader is elsewhere
	kindFailed    = "failed"    // nothing happened
	kindUnknown   = "unknown"   // it may or may not have happened
)

// classify says what an error means for the operation's outcome. Before
// COMMIT nothing of a transaction has replicated, so any error there is a
// definite failure; at COMMIT only the errors documented as definite are.
func classify(err error, committing bool) string {
	switch {
	case errors.Is(err, dqlite.ErrNotLeader):
		return kindNotLeader
	case !committing, errors.Is(err, dqlite.ErrBusy), errors.Is(err, dqlite.ErrTxTooLarge):
		return kindFailed
	case errors.Is(err, sqlite3.FULL), errors.Is(err, sqlite3.IOERR):
		// The disk refused the frames before Raft saw them: once Raft
		// committed a transaction, its frames are retried until written,
		// and if the node stops first the commit fails with ErrClosed.
		return kindFailed
	}
	return kindUnknown
}

func (nd *node) leaderSlot() int {
	_, addr := nd.n.Leader()
	if s, ok := nd.slots[addr]; ok {
		return s
	}
	return -1
}

func (nd *node) fail(err error, committing bool) reply {
	return reply{Kind: classify(err, committing), Err: fmt.Sprintf("%v [slot %d]", err, nd.slot), Leader: nd.leaderSlot()}
}

func (nd *node) db(ctx context.Context, name string) (*sql.DB, error) {
	nd.mu.Lock()
	db := nd.dbs[name]
	nd.mu.Unlock()
	if db != nil {
		return db, nil
	}
	db, err := nd.n.Open(ctx, name) // without the lock: it may wait for a leader
	if err != nil {
		return nil, err
	}
	nd.mu.Lock()
	defer nd.mu.Unlock()
	if old := nd.dbs[name]; old != nil {
		db.Close()
		return old, nil
	}
	nd.dbs[name] = db
	return db, nil
}

func (nd *node) routes() http.Handler {
	m := http.NewServeMux()
	handle := func(path string, f func(ctx context.Context, q map[string]int64) reply) {
		m.HandleFunc(path, func(w http.ResponseWriter, r *http.Request) {
			q := map[string]int64{}
			for k, v := range r.URL.Query() {
				n, err := strconv.ParseInt(v[0], 10, 64)
				if err != nil {
					http.Error(w, fmt.Sprintf("%s=%q is not a number", k, v[0]), http.StatusBadRequest)
					return
				}
				q[k] = n
			}
			rep := f(r.Context(), q)
			w.Header().Set("Content-Type", "application/json")
			json.NewEncoder(w).Encode(rep)
		})
	}
	handle("/status", nd.status)
	handle("/fault", func(ctx context.Context, q map[string]int64) reply {
		// A request that waited in the listen queue while the node was
		// down or stopped may arrive after a newer one: keep the newest.
		nd.mu.Lock()
		defer nd.mu.Unlock()
		if q["gen"] < nd.faultGen { // older than this process or than the last applied
			return reply{OK: true}
		}
		nd.faultGen = q["gen"]
		var drop []int
		for s := 0; s < 64; s++ {
			if q["drop"]&(1<<s) != 0 {
				drop = append(drop, s)
			}
		}
		nd.net.Drop(drop)
		faults.Set("", faults.Mode(q["disk"]))
		return reply{OK: true}
	})
	handle("/add", func(ctx context.Context, q map[string]int64) reply {
		addr := ""
		for a, s := range nd.slots {
			if int64(s) == q["slot"] {
				addr = a
			}
		}
		if err := nd.n.AddVoter(ctx, dqlite.NodeID(q["id"]), addr); err != nil {
			return nd.fail(err, true)
		}
		return reply{OK: true}
	})
	handle("/remove", func(ctx context.Context, q map[string]int64) reply {
		if err := nd.n.RemoveNode(ctx, dqlite.NodeID(q["id"])); err != nil {
			return nd.fail(err, true)
		}
		return reply{OK: true}
	})
	handle("/transfer", func(ctx context.Context, q map[string]int64) reply {
		if err := nd.n.TransferLeadership(ctx, dqlite.NodeID(q["id"])); err != nil {
			return nd.fail(err, true)
		}
		return reply{OK: true}
	})
	handle("/crash", func(ctx context.Context, q map[string]int64) reply {
		p := q["point"]
		if p < 0 || p >= int64(len(crashpoint.Points)) {
			return reply{Err: fmt.Sprintf("no crash point %d", p)}
		}
		if err := crashpoint.Arm(crashpoint.Points[p], int(q["after"])); err != nil {
			return reply{Err: err.Error()}
		}
		return reply{OK: true}
	})
	handle("/setup", nd.setup)
	handle("/set/add", nd.setAdd)
	handle("/bank/transfer", nd.bankTransfer)
	handle("/bank/read", nd.bankRead)
	handle("/reg/read", nd.regRead)
	handle("/reg/write", nd.regWrite)
	handle("/reg/cas", nd.regCAS)
	handle("/marker/write", nd.markerWrite)
	handle("/marker/read", nd.markerRead)
	handle("/final", nd.final)
	return m
}

func (nd *node) status(ctx context.Context, q map[string]int64) reply {
	st := &status{Slot: nd.slot, ID: uint64(nd.n.ID()), IsLeader: nd.n.IsLeader(), Leader: nd.leaderSlot(), Disk: faults.Get(nd.n.Dir()).String()}
	if m, err := nd.n.Members(ctx); err == nil {
		st.Members = m
	}
	return reply{OK: true, Status: st}
}

// The databases of the workloads, and what each holds.
var schemas = map[string]string{
	"set":  `CREATE TABLE IF NOT EXISTS s (v INTEGER PRIMARY KEY); CREATE TABLE IF NOT EXISTS pad (v INTEGER, b BLOB)`,
	"bank": `CREATE TABLE IF NOT EXISTS acct (id INTEGER PRIMARY KEY, bal INTEGER NOT NULL)`,
	"reg":  `CREATE TABLE IF NOT EXISTS r (k INTEGER PRIMARY KEY, v INTEGER NOT NULL); CREATE TABLE IF NOT EXISTS reads (n INTEGER)`,
}

// Every database has a marker table for the end of a run.
const markerSchema = `CREATE TABLE IF NOT EXISTS marker (v INTEGER PRIMARY KEY)`

const (
	bankAccounts = 5
	bankInitial  = 100
)

// setup creates the workloads' databases and tables (run on the leader).
func (nd *node) setup(ctx context.Context, q map[string]int64) reply {
	for name, schema := range schemas {
		db, err := nd.db(ctx, name)
		if err != nil {
			return nd.fail(err, false)
		}
		rep := nd.tx(ctx, db, func(tx *sql.Tx) (reply, error) {
			if _, err := tx.Exec(schema + `; ` + markerSchema); err != nil {
				return reply{}, err
			}
			if name == "bank" {
				for i := 0; i < bankAccounts; i++ {
					if _, err := tx.Exec(`INSERT OR IGNORE INTO acct VALUES (?, ?)`, i, bankInitial); err != nil {
						return reply{}, err
					}
				}
			}
			if name == "reg" {
				if _, err := tx.Exec(`INSERT INTO reads SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM reads)`); err != nil {
					return reply{}, err
				}
			}
			return reply{OK: true}, nil
		})
		if !rep.OK {
			return rep
		}
	}
	return reply{OK: true}
}

// tx runs f in a write transaction and commits it, classifying errors.
func (nd *node) tx(ctx context.Context, db *sql.DB, f func(*sql.Tx) (reply, error)) reply {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return nd.fail(err, false)
	}
	rep, err := f(tx)
	if err != nil {
		tx.Rollback()
		return nd.fail(err, false)
	}
	if err := tx.Commit(); err != nil {
		return nd.fail(err, true)
	}
	return rep
}

func (nd *node) open(ctx context.Context, name string) (*sql.DB, *reply) {
	db, err := nd.db(ctx, name)
	if err != nil {
		r := nd.fail(err, false)
		return nil, &r
	}
	return db, nil
}

func (nd *node) setAdd(ctx context.Context, q map[string]int64) reply {
	db, r := nd.open(ctx, "set")
	if r != nil {
		return *r
	}
	return nd.tx(ctx, db, func(tx *sql.Tx) (reply, error) {
		_, err := tx.Exec(`INSERT INTO s VALUES (?)`, q["v"])
		if err == nil && q["pad"] > 0 {
			// A large transaction: its frames take several batches.
			_, err = tx.Exec(`INSERT INTO pad VALUES (?, randomblob(?))`, q["v"], q["pad"])
		}
		return reply{OK: true}, err
	})
}

func (nd *node) bankTransfer(ctx context.Context, q map[string]int64) reply {
	db, r := nd.open(ctx, "bank")
	if r != nil {
		return *r
	}
	// Both balances are read and written back as absolute values, as
	// Jepsen's bank does: a transfer computed from a stale or
	// non-serializable read then changes the total, which reads catch.
	return nd.tx(ctx, db, func(tx *sql.Tx) (reply, error) {
		var from, to int64
		if err := tx.QueryRow(`SELECT bal FROM acct WHERE id = ?`, q["from"]).Scan(&from); err != nil {
			return reply{}, err
		}
		if err := tx.QueryRow(`SELECT bal FROM acct WHERE id = ?`, q["to"]).Scan(&to); err != nil {
			return reply{}, err
		}
		if from < q["amount"] {
			return reply{OK: true, Value: 0}, nil // nothing to move: a no-op
		}
		if _, err := tx.Exec(`UPDATE acct SET bal = ? WHERE id = ?`, from-q["amount"], q["from"]); err != nil {
			return reply{}, err
		}
		if _, err := tx.Exec(`UPDATE acct SET bal = ? WHERE id = ?`, to+q["amount"], q["to"]); err != nil {
			return reply{}, err
		}
		return reply{OK: true, Value: q["amount"]}, nil
	})
}

// bankRead reads every balance in one read transaction, on this node.
func (nd *node) bankRead(ctx context.Context, q map[string]int64) reply {
	db, r := nd.open(ctx, "bank")
	if r != nil {
		return *r
	}
	vals, err := queryInts(ctx, db, `SELECT bal FROM acct ORDER BY id`)
	if err != nil {
		return nd.fail(err, false)
	}
	return reply{OK: true, Values: vals}
}

// regRead reads a register. level=0 reads this node's copy; level=1 is a
// write transaction (run on the leader) that reads the key and bumps a
// counter, so that it commits through Raft only if its node still led when
// it read; level=2 is a linearizable read of this node's copy
// (dqlite.ReadLinearizable: a read index from the leader).
func (nd *node) regRead(ctx context.Context, q map[string]int64) reply {
	db, r := nd.open(ctx, "reg")
	if r != nil {
		return *r
	}
	read := func(qr interface {
		QueryRowContext(context.Context, string, ...any) *sql.Row
	}) (reply, error) {
		var v int64
		err := qr.QueryRowContext(ctx, `SELECT v FROM r WHERE k = ?`, q["k"]).Scan(&v)
		if errors.Is(err, sql.ErrNoRows) {
			return reply{OK: true}, nil
		}
		return reply{OK: true, Value: v, Found: true}, err
	}
	if q["level"] == 2 {
		ctx = dqlite.WithReadLevel(ctx, dqlite.ReadLinearizable)
	}
	if q["level"] != 1 {
		rep, err := read(db)
		if err != nil {
			return nd.fail(err, false)
		}
		rep.Leader = nd.leaderSlot() // whom this node believed led
		return rep
	}
	return nd.tx(ctx, db, func(tx *sql.Tx) (reply, error) {
		rep, err := read(tx)
		if err != nil {
			return rep, err
		}
		_, err = tx.Exec(`UPDATE reads SET n = n + 1`)
		return rep, err
	})
}

func (nd *node) regWrite(ctx context.Context, q map[string]int64) reply {
	db, r := nd.open(ctx, "reg")
	if r != nil {
		return *r
	}
	return nd.tx(ctx, db, func(tx *sql.Tx) (reply, error) {
		_, err := tx.Exec(`INSERT INTO r VALUES (?, ?) ON CONFLICT (k) DO UPDATE SET v = excluded.v`, q["k"], q["v"])
		return reply{OK: true}, err
	})
}

// regCAS sets k to new if it holds old. Value is 1 if it did. Like a
// strong read, it always commits through Raft.
func (nd *node) regCAS(ctx context.Context, q map[string]int64) reply {
	db, r := nd.open(ctx, "reg")
	if r != nil {
		return *r
	}
	return nd.tx(ctx, db, func(tx *sql.Tx) (reply, error) {
		res, err := tx.Exec(`UPDATE r SET v = ? WHERE k = ? AND v = ?`, q["new"], q["k"], q["old"])
		if err != nil {
			return reply{}, err
		}
		n, err := res.RowsAffected()
		if err != nil {
			return reply{}, err
		}
		if _, err := tx.Exec(`UPDATE reads SET n = n + 1`); err != nil {
			return reply{}, err
		}
		return reply{OK: true, Value: n}, nil
	})
}

var dbNames = []string{"bank", "reg", "set"}

func (nd *node) markerWrite(ctx context.Context, q map[string]int64) reply {
	for _, name := range dbNames {
		db, r := nd.open(ctx, name)
		if r != nil {
			return *r
		}
		rep := nd.tx(ctx, db, func(tx *sql.Tx) (reply, error) {
			_, err := tx.Exec(`INSERT OR IGNORE INTO marker VALUES (?)`, q["v"])
			return reply{OK: true}, err
		})
		if !rep.OK {
			return rep
		}
	}
	return reply{OK: true}
}

// markerRead reports whether this node has applied the marker in every
// database.
func (nd *node) markerRead(ctx context.Context, q map[string]int64) reply {
	for _, name := range dbNames {
		db, r := nd.open(ctx, name)
		if r != nil {
			return *r
		}
		var n int
		if err := db.QueryRowContext(ctx, `SELECT count(*) FROM marker WHERE v = ?`, q["v"]).Scan(&n); err != nil {
			return nd.fail(err, false)
		}
		if n == 0 {
			return reply{OK: true}
		}
	}
	return reply{OK: true, Found: true}
}

// final checkpoints database db (an index into dbNames) on this node and
// reports its file's hash, integrity_check and content.
func (nd *node) final(ctx context.Context, q map[string]int64) reply {
	name := dbNames[q["db"]%int64(len(dbNames))]
	db, r := nd.open(ctx, name)
	if r != nil {
		return *r
	}
	f := &final{}
	if err := db.QueryRowContext(ctx, `PRAGMA integrity_check`).Scan(&f.Integrity); err != nil {
		return nd.fail(err, false)
	}
	var err error
	switch name {
	case "set":
		f.Values, err = queryInts(ctx, db, `SELECT v FROM s ORDER BY v`)
	case "bank":
		f.Values, err = queryInts(ctx, db, `SELECT bal FROM acct ORDER BY id`)
	case "reg":
		f.Values, err = queryInts(ctx, db, `SELECT v FROM r ORDER BY k`)
	}
	if err != nil {
		return nd.fail(err, false)
	}
	if err := nd.n.Checkpoint(ctx, name); err != nil {
		return nd.fail(err, false)
	}
	b, err := os.ReadFile(filepath.Join(nd.n.Dir(), name))
	if err != nil {
		return nd.fail(err, false)
	}
	sum := sha256.Sum256(b)
	f.Hash = hex.EncodeToString(sum[:8])
	return reply{OK: true, Final: f}
}

func queryInts(ctx context.Context, db interface {
	QueryContext(context.Context, string, ...any) (*sql.Rows, error)
}, query string) ([]int64, error) {
	rows, err := db.QueryContext(ctx, query)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []int64
	for rows.Next() {
		var v int64
		if err := rows.Scan(&v); err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, rows.Err()
}
