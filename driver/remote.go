package driver

import (
	"context"
	"crypto/tls"
	"database/sql/driver"
	"fmt"
	"net"
	"reflect"
	"sync"
	"time"

	"github.com/godqlite/dqlite/internal/wire"
)

// RemoteOptions are the settings of a RemoteConnector.
type RemoteOptions struct {
	// Dial opens a connection to a node (for example over TLS). Default:
	// TCP.
	Dial func(ctx context.Context, address string) (net.Conn, error)
	// TLS, when set, is the client's mutual TLS configuration (see
	// DialTLS), on top of Dial.
	TLS *tls.Config
	// ReadLevel is the read level of queries whose context names none.
	ReadLevel ReadLevel
	// Timeout bounds the search for the leader when a statement's context
	// has no deadline. Default 30s.
	Timeout time.Duration
}

// RemoteConnector opens connections to a database of a cluster from a
// program that is no member of it. Every statement runs on the leader,
// over the client protocol (DESIGN.md, "The client protocol"): the
// connector finds the leader from the addresses it was given and follows
// leader changes, and sends a request again only where nothing can have
// run (see rconn). It implements driver.Connector; use it with sql.OpenDB,
// or open "dqlite://<address>,…/<database>" with sql.Open.
type RemoteConnector struct {
	t     *target
	name  string
	level ReadLevel
}

var _ driver.Connector = (*RemoteConnector)(nil)

// NewRemoteConnector returns a connector for database name of the cluster
// whose nodes (some or all) listen at addrs.
func NewRemoteConnector(addrs []string, name string, opts RemoteOptions) *RemoteConnector {
	dial := OrTCP(opts.Dial)
	if opts.TLS != nil {
		dial = DialTLS(dial, opts.TLS)
	}
	addrs = append([]string{}, addrs...)
	return &RemoteConnector{name: name, level: opts.ReadLevel, t: &target{
		dial:    dial,
		addrs:   func() []string { return addrs },
		timeout: or(opts.Timeout, 30*time.Second),
	}}
}

func or[T comparable](v, def T) T {
	var zero T
	if v == zero {
		return def
	}
	return v
}

// Driver implements driver.Connector.
func (c *RemoteConnector) Driver() driver.Driver { return Driver{} }

// Connect implements driver.Connector: it opens a session to the leader.
func (c *RemoteConnector) Connect(ctx context.Context) (driver.Conn, error) {
	rc := newRconn(c.t, c.name, c.level)
	s, err := c.t.connect(ctx, c.name)
	if err != nil {
		return nil, err
	}
	rc.s = s
	rc.live.Store(s)
	return &remoteConn{rc: rc}, nil
}

// remoteConn is a connection of a remote client: everything it runs, runs
// on the leader.
type remoteConn struct {
	mu     sync.Mutex
	rc     *rconn
	closed bool
}

var (
	_ driver.ConnBeginTx        = (*remoteConn)(nil)
	_ driver.ConnPrepareContext = (*remoteConn)(nil)
	_ driver.ExecerContext      = (*remoteConn)(nil)
	_ driver.QueryerContext     = (*remoteConn)(nil)
	_ driver.NamedValueChecker  = (*remoteConn)(nil)
	_ driver.Validator          = (*remoteConn)(nil)
)

func (c *remoteConn) enter() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return driver.ErrBadConn
	}
	return nil
}

func (c *remoteConn) Prepare(query string) (driver.Stmt, error) {
	return c.PrepareContext(context.Background(), query)
}

// PrepareContext returns a statement that the leader prepares when it
// first runs (and keeps prepared for the session).
func (c *remoteConn) PrepareContext(ctx context.Context, query string) (driver.Stmt, error) {
	return &remoteStmt{c: c, query: query}, nil
}

func (c *remoteConn) ExecContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Result, error) {
	if err := c.enter(); err != nil {
		return nil, err
	}
	defer c.mu.Unlock()
	res, err := c.rc.exec(ctx, query, args)
	noteCommit(ctx, c.rc.takeCommit())
	return res, err
}

func (c *remoteConn) QueryContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Rows, error) {
	if err := c.enter(); err != nil {
		return nil, err
	}
	defer c.mu.Unlock()
	rs, err := c.rc.query(ctx, query, args)
	noteCommit(ctx, c.rc.takeCommit())
	if err != nil {
		return nil, err
	}
	return remoteRows{c, rs}, nil
}

func (c *remoteConn) CheckNamedValue(nv *driver.NamedValue) error { return checkValue(nv) }

func (c *remoteConn) Begin() (driver.Tx, error) {
	return c.BeginTx(context.Background(), driver.TxOptions{})
}

func (c *remoteConn) BeginTx(ctx context.Context, opts driver.TxOptions) (driver.Tx, error) {
	if err := checkIsolation(opts); err != nil {
		return nil, err
	}
	if err := c.enter(); err != nil {
		return nil, err
	}
	defer c.mu.Unlock()
	if err := c.rc.begin(ctx, opts.ReadOnly); err != nil {
		return nil, err
	}
	return remoteTx{c, ctx}, nil
}

// remoteTx is a transaction begun with BeginTx (ctx is BeginTx's).
type remoteTx struct {
	c   *remoteConn
	ctx context.Context
}

func (t remoteTx) Commit() error   { return t.end(wire.Commit) }
func (t remoteTx) Rollback() error { return t.end(wire.Rollback) }

func (t remoteTx) end(typ wire.Type) error {
	c := t.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return driver.ErrBadConn
	}
	err := c.rc.end(typ)
	noteCommit(t.ctx, c.rc.takeCommit())
	return err
}

func (c *remoteConn) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	c.rc.close()
	return nil
}

// IsValid implements driver.Validator: a connection whose session broke
// in a transaction that the application has ended can be reused (a new
// session opens at its next statement).
func (c *remoteConn) IsValid() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return !c.closed && c.rc.doomed == nil
}

type remoteStmt struct {
	c     *remoteConn
	query string
}

func (s *remoteStmt) Close() error  { return nil }
func (s *remoteStmt) NumInput() int { return -1 }
func (s *remoteStmt) Exec(args []driver.Value) (driver.Result, error) {
	return s.c.ExecContext(context.Background(), s.query, named(args))
}
func (s *remoteStmt) Query(args []driver.Value) (driver.Rows, error) {
	return s.c.QueryContext(context.Background(), s.query, named(args))
}
func (s *remoteStmt) ExecContext(ctx context.Context, args []driver.NamedValue) (driver.Result, error) {
	return s.c.ExecContext(ctx, s.query, args)
}
func (s *remoteStmt) QueryContext(ctx context.Context, args []driver.NamedValue) (driver.Rows, error) {
	return s.c.QueryContext(ctx, s.query, args)
}
func (s *remoteStmt) CheckNamedValue(nv *driver.NamedValue) error { return checkValue(nv) }

type remoteRows struct {
	c  *remoteConn
	rs *rrows
}

func (r remoteRows) Columns() []string { return r.rs.cols }
func (r remoteRows) Next(dest []driver.Value) error {
	r.c.mu.Lock()
	defer r.c.mu.Unlock()
	err := r.rs.next(dest)
	noteCommit(r.rs.ctx, r.c.rc.takeCommit())
	return err
}
func (r remoteRows) Close() error {
	r.c.mu.Lock()
	defer r.c.mu.Unlock()
	err := r.rs.close()
	noteCommit(r.rs.ctx, r.c.rc.takeCommit())
	return err
}
func (r remoteRows) ColumnTypeDatabaseTypeName(i int) string {
	return r.rs.ColumnTypeDatabaseTypeName(i)
}
func (r remoteRows) ColumnTypeScanType(i int) reflect.Type { return r.rs.ColumnTypeScanType(i) }

// DialTLS wraps dial (nil: TCP) in a TLS client of configuration c, which
// verifies the node's certificate against the host of the address it
// dialed unless c names a ServerName.
func DialTLS(dial func(ctx context.Context, address string) (net.Conn, error), c *tls.Config) func(ctx context.Context, address string) (net.Conn, error) {
	dial = OrTCP(dial)
	return func(ctx context.Context, address string) (net.Conn, error) {
		nc, err := dial(ctx, address)
		if err != nil {
			return nil, err
		}
		cc := c.Clone()
		if cc.ServerName == "" {
			if host, _, err := net.SplitHostPort(address); err == nil {
				cc.ServerName = host
			}
		}
		tc := tls.Client(nc, cc)
		if err := tc.HandshakeContext(ctx); err != nil {
			nc.Close()
			return nil, fmt.Errorf("TLS with %s: %w", address, err)
		}
		return tc, nil
	}
}

// OrTCP returns dial, or, when it is nil, a plain TCP dialer.
func OrTCP(dial func(ctx context.Context, address string) (net.Conn, error)) func(ctx context.Context, address string) (net.Conn, error) {
	if dial != nil {
		return dial
	}
	var d net.Dialer
	return func(ctx context.Context, address string) (net.Conn, error) { return d.DialContext(ctx, "tcp", address) }
}
