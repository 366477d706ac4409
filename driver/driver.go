// Package driver is dqlite's database/sql driver.
//
// It is registered with database/sql as "godqlite" (Name): not "dqlite",
// which programs using canonical/go-dqlite register themselves, nor
// "sqlite3", which other SQLite drivers take. A data source name is the
// address of a node running in this process and a database name,
// "127.0.0.1:9001/test.db"; dqlite.Node.Open does the same in one call and
// is the usual way in.
//
// Connections are SQLite connections (github.com/ncruces/go-sqlite3, no cgo)
// to the node's local copy of the database, opened through the dqlite VFS.
// Reads run locally on every node. A statement that writes is checked
// before it runs: on a node that is not the leader it fails with an error
// matching dqlite.ErrNotLeader that names the leader. On the leader, COMMIT
// returns only once a Raft quorum has the transaction's WAL frames.
package driver

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/godqlite/dqlite/internal/command"
	"github.com/godqlite/dqlite/internal/errs"
	"github.com/godqlite/dqlite/internal/metrics"
)

// Backend is what the driver needs from a node. *dqlite.Node provides one;
// applications do not implement it.
type Backend interface {
	// Database returns the named database, waiting for it to exist.
	Database(ctx context.Context, name string) (Database, error)
	// CheckLeader returns nil when this node may commit writes now, and
	// otherwise an error matching ErrNotLeader (or ErrClosed).
	CheckLeader() error
	// CheckOpen returns ErrClosed once the node is closed.
	CheckOpen() error
	// BusyTimeout bounds how long a statement waits for a lock.
	BusyTimeout() time.Duration
	// Track registers a connection, so that the node can roll back its
	// write transaction when leadership is lost and close it on shutdown.
	Track(c Aborter) (id uint64, untrack func())
	// ApplyTimeout bounds a wait for the leader or for an index.
	ApplyTimeout() time.Duration

	// Self and Leader return a node's ID and address: this one's, and
	// the leader's ("" when none is known).
	Self() (id uint64, address string)
	Leader() (id uint64, address string)
	// Dial opens a connection to the node at address, for the client
	// protocol, the way the node dials its Raft peers.
	Dial(ctx context.Context, address string) (net.Conn, error)
	// ReadIndex returns, on the ready leader, the index of the last entry
	// it applied once a heartbeat round has confirmed that it still leads;
	// elsewhere an error matching ErrNotLeader.
	ReadIndex(ctx context.Context) (uint64, error)
	// AppliedIndex and WaitApplied are the node's applied index (every
	// reader sees it), and a wait for it to reach index.
	AppliedIndex() uint64
	WaitApplied(ctx context.Context, index uint64) error
	// NoteWrite tells the node that a write through it committed at
	// index; WriteFloor is the highest such index, which its reads wait
	// for.
	NoteWrite(index uint64)
	WriteFloor() uint64
	// Metrics returns the node's metrics (nil when they are off).
	Metrics() *metrics.Set
}

// Aborter is a connection as the node sees it.
type Aborter interface {
	// Abort rolls back the connection's write transaction, if any; later
	// calls in that transaction return cause. With closing set it also
	// closes the connection.
	Abort(cause error, closing bool)
}

// Database is one replicated database, as the driver sees it.
type Database interface {
	URI(conn uint64) string       // SQLite URI opening it as connection conn
	TakeError(conn uint64) error  // real cause of conn's last failed commit
	Settle(conn uint64)           // a statement of conn returned
	Settled() <-chan struct{}     // closed when the next statement returns
	TakeIndex(conn uint64) uint64 // Raft index of conn's last commit
	Failed() error                // non-nil once this node's copy stopped
	// Await waits until what conn's last statement committed locally is
	// committed by Raft (nil), or failed; cuts is what Cuts returned when
	// the transaction began.
	Await(conn uint64, cuts uint64) error
	// Cuts and Fence keep reads from seeing what is not committed: Cuts
	// before a read's snapshot is taken, Fence after (see fsm.DB.Fence).
	Cuts() uint64
	Fence(ctx context.Context, cuts uint64) (retry bool, err error)
	// Admit waits while the leader drains its writes for a checkpoint.
	Admit()
	// StageChanges hands over what conn's committing transaction changed.
	StageChanges(conn uint64, ch command.TxChanges)
}

// Driver implements database/sql/driver.Driver and DriverContext.
type Driver struct{}

var (
	_ driver.Driver        = Driver{}
	_ driver.DriverContext = Driver{}
)

// Name is the driver's name in database/sql.
const Name = "godqlite"

func init() {
	sql.Register(Name, Driver{})
}

var (
	backendsMu sync.Mutex
	backends   = map[string]Backend{}
)

// RegisterBackend makes the node listening at address reachable through
// data source names. dqlite.New calls it; Unregister is returned.
func RegisterBackend(address string, b Backend) (unregister func()) {
	backendsMu.Lock()
	backends[address] = b
	backendsMu.Unlock()
	return func() {
		backendsMu.Lock()
		if backends[address] == b {
			delete(backends, address)
		}
		backendsMu.Unlock()
	}
}

// Open implements driver.Driver.
func (d Driver) Open(dsn string) (driver.Conn, error) {
	c, err := d.OpenConnector(dsn)
	if err != nil {
		return nil, err
	}
	return c.Connect(context.Background())
}

// OpenConnector implements driver.DriverContext. A data source name is
// either "<node address>/<database>", a node running in this process, or
// "dqlite://<address>,<address>…/<database>", a remote client of the
// cluster whose nodes listen at those addresses (see RemoteConnector).
// Either may end with options: "?level=linearizable" sets the default
// read level, "?forward=false" turns a local connector's forwarding off.
func (Driver) OpenConnector(dsn string) (driver.Connector, error) {
	rest, remote := strings.CutPrefix(dsn, "dqlite://")
	rest, params, _ := strings.Cut(rest, "?")
	addr, db, ok := strings.Cut(rest, "/")
	if !ok || addr == "" || db == "" {
		return nil, fmt.Errorf("dqlite: data source name %q is neither <node address>/<database> nor dqlite://<address>,…/<database>", dsn)
	}
	var opts Options
	for _, kv := range strings.Split(params, "&") {
		if kv == "" {
			continue
		}
		k, v, _ := strings.Cut(kv, "=")
		switch {
		case k == "level" && v == "local":
			opts.ReadLevel = Local
		case k == "level" && v == "linearizable":
			opts.ReadLevel = Linearizable
		case k == "forward" && (v == "false" || v == "off") && !remote:
			opts.NoForwarding = true
		case k == "forward" && (v == "true" || v == "on") && !remote:
		default:
			known := "level=local|linearizable, forward=true|false"
			if remote {
				known = "level=local|linearizable" // a remote client sends everything to the leader
			}
			return nil, fmt.Errorf("dqlite: data source name %q: unknown option %q (known: %s)", dsn, kv, known)
		}
	}
	if remote {
		addrs := strings.Split(addr, ",")
		for _, a := range addrs {
			if _, _, err := net.SplitHostPort(a); err != nil {
				return nil, fmt.Errorf("dqlite: data source name %q: %q is not host:port", dsn, a)
			}
		}
		return NewRemoteConnector(addrs, db, RemoteOptions{ReadLevel: opts.ReadLevel}), nil
	}
	backendsMu.Lock()
	b := backends[addr]
	backendsMu.Unlock()
	if b == nil {
		return nil, fmt.Errorf("%w: no node listens at %s in this process (data source name %q; a node is reachable by name only while it runs; "+
			"a program that is no member of the cluster uses dqlite://%s/%s)", errs.ErrNoNode, addr, dsn, addr, db)
	}
	return NewConnectorWith(b, db, opts), nil
}

// Connector opens connections to one database of one node. It implements
// driver.Connector; use it with sql.OpenDB.
type Connector struct {
	backend Backend
	name    string
	opts    Options
}

var _ driver.Connector = (*Connector)(nil)

// NewConnector returns a Connector for database name on backend.
func NewConnector(b Backend, name string) *Connector {
	return &Connector{backend: b, name: name}
}

// NewConnectorWith returns a Connector for database name on backend, with
// options.
func NewConnectorWith(b Backend, name string, opts Options) *Connector {
	return &Connector{backend: b, name: name, opts: opts}
}

// Driver implements driver.Connector.
func (c *Connector) Driver() driver.Driver { return Driver{} }

// Connect implements driver.Connector.
func (c *Connector) Connect(ctx context.Context) (driver.Conn, error) {
	db, err := c.backend.Database(ctx, c.name)
	if err != nil {
		return nil, err
	}
	if err := db.Failed(); err != nil {
		return nil, err
	}
	return newConn(ctx, c.backend, db, c.name, c.opts, false)
}
