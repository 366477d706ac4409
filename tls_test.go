package dqlite

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"database/sql"
	"errors"
	"log/slog"
	"math/big"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-msgpack/v2/codec"
	"github.com/hashicorp/raft"

	"github.com/godqlite/dqlite/driver"
)

// testTLS returns a server and a client configuration sharing a CA made
// for this test, for 127.0.0.1, with client certificates required; the
// certificate allows both uses, as a node's does. clientOnly is a client
// configuration whose certificate allows client authentication only.
func testTLS(t *testing.T) (server, client *tls.Config) {
	server, client, _ = testTLSWithClient(t)
	return server, client
}

func testTLSWithClient(t *testing.T) (server, client, clientOnly *tls.Config) {
	t.Helper()
	key := func() *ecdsa.PrivateKey {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	caKey := key()
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	cert := func(serial int64, uses ...x509.ExtKeyUsage) tls.Certificate {
		k := key()
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: "node"},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
			IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, ExtKeyUsage: uses}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &k.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: k}
	}
	node := cert(2, x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth)
	server = &tls.Config{Certificates: []tls.Certificate{node}, ClientCAs: pool, ClientAuth: tls.RequireAndVerifyClientCert}
	client = &tls.Config{Certificates: []tls.Certificate{node}, RootCAs: pool}
	clientOnly = &tls.Config{Certificates: []tls.Certificate{cert(3, x509.ExtKeyUsageClientAuth)}, RootCAs: pool}
	return server, client, clientOnly
}

// TestForward_OverTLS: with the Raft listener and dialer wrapped in TLS,
// forwarded writes and a remote client go through TLS too (the client
// protocol shares the listener), and a client without a certificate, or
// in plaintext, is refused.
func TestForward_OverTLS(t *testing.T) {
	serverTLS, clientTLS := testTLS(t)
	dial := func(ctx context.Context, addr string) (net.Conn, error) {
		d := tls.Dialer{Config: clientTLS}
		return d.DialContext(ctx, "tcp", addr)
	}
	c := &cluster{t: t, net: &testNet{blocked: map[[2]int]bool{}, conns: map[[2]int][]net.Conn{}}, dbs: map[[2]any]*sql.DB{}}
	dirs := []string{t.TempDir(), t.TempDir(), t.TempDir()}
	t.Cleanup(c.close) // before the directories are removed
	var listeners []net.Listener
	var peers []Peer
	for i := range 3 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		listeners = append(listeners, tls.NewListener(l, serverTLS))
		peers = append(peers, Peer{ID: NodeID(i + 1), Address: l.Addr().String()})
	}
	for i := range 3 {
		n, err := New(Config{ID: NodeID(i + 1), Address: peers[i].Address, Listener: listeners[i], Dial: dial,
			Dir: dirs[i], Cluster: peers, Logger: testLogger(t)})
		if err != nil {
			t.Fatal(err)
		}
		c.nodes = append(c.nodes, n)
	}
	l := c.waitLeader()
	f := c.follower(l)
	mustExec(t, c.db(f, "tls.db"), `CREATE TABLE t (id INTEGER PRIMARY KEY); INSERT INTO t VALUES (1)`)
	o := newOutcome()
	o.record(1, nil)

	remote := sql.OpenDB(driver.NewRemoteConnector([]string{peers[f].Address}, "tls.db", driver.RemoteOptions{Dial: dial}))
	defer remote.Close()
	if _, err := remote.Exec(`INSERT INTO t VALUES (2)`); err != nil {
		t.Fatalf("remote client over TLS: %v", err)
	}
	o.record(2, nil)

	noCert := &tls.Config{RootCAs: clientTLS.RootCAs}
	for name, d := range map[string]func(context.Context, string) (net.Conn, error){
		"plaintext": nil,
		"TLS without a client certificate": func(ctx context.Context, addr string) (net.Conn, error) {
			d := tls.Dialer{Config: noCert}
			return d.DialContext(ctx, "tcp", addr)
		},
	} {
		bad := sql.OpenDB(driver.NewRemoteConnector([]string{peers[l].Address}, "tls.db", driver.RemoteOptions{Dial: d}))
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := bad.ExecContext(ctx, `INSERT INTO t VALUES (3)`)
		cancel()
		bad.Close()
		t.Logf("%s client: %v", name, err)
		if !errors.Is(err, ErrNoLeader) {
			t.Errorf("%s client: %v, want it refused (ErrNoLeader)", name, err)
		}
	}
	o.record(3, errors.New("refused"))
	c.check("tls.db", `SELECT id FROM t`, o)
}

// recordLog is a slog handler that keeps the messages of warnings.
type recordLog struct {
	mu   *sync.Mutex
	msgs *[]string
}

func newRecordLog() recordLog { return recordLog{mu: &sync.Mutex{}, msgs: &[]string{}} }

func (h recordLog) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelWarn }
func (h recordLog) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	s := r.Message
	r.Attrs(func(a slog.Attr) bool { s += " " + a.String(); return true })
	*h.msgs = append(*h.msgs, s)
	return nil
}
func (h recordLog) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h recordLog) WithGroup(string) slog.Handler      { return h }

func (h recordLog) count(substr string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	for _, m := range *h.msgs {
		if strings.Contains(m, substr) {
			n++
		}
	}
	return n
}

// TestConfigTLS: with Config.TLS every node's Raft traffic, forwarded
// writes and remote clients use mutual TLS; a plaintext peer, a client
// without a certificate and one whose certificate another CA signed are
// refused, and each refusal is logged.
func TestConfigTLS(t *testing.T) {
	serverTLS, clientTLS, clientOnly := testTLSWithClient(t)
	nodeTLS := &tls.Config{Certificates: serverTLS.Certificates, RootCAs: clientTLS.RootCAs}
	logs := newRecordLog()
	c := newCluster(t, 3, func(cfg *Config) {
		cfg.TLS = nodeTLS
		if cfg.ID == 1 {
			cfg.Logger = slog.New(logs)
		}
	})
	l := c.waitLeader()
	f := c.follower(l)
	mustExec(t, c.db(f, "tls.db"), `CREATE TABLE t (id INTEGER PRIMARY KEY); INSERT INTO t VALUES (1)`)
	o := newOutcome()
	o.record(1, nil)

	remote := sql.OpenDB(driver.NewRemoteConnector([]string{c.nodes[f].Address()}, "tls.db", driver.RemoteOptions{TLS: clientOnly}))
	defer remote.Close()
	if _, err := remote.Exec(`INSERT INTO t VALUES (2)`); err != nil {
		t.Fatalf("remote client over TLS: %v", err)
	}
	o.record(2, nil)

	_, otherCA := testTLS(t) // a certificate of another CA
	otherCA.RootCAs = clientTLS.RootCAs
	addr := c.nodes[0].Address()
	for name, opts := range map[string]driver.RemoteOptions{
		"plaintext":                        {},
		"TLS without a client certificate": {TLS: &tls.Config{RootCAs: clientTLS.RootCAs}},
		"a certificate of another CA":      {TLS: otherCA},
	} {
		before := logs.count("refused a connection")
		opts.Timeout = time.Second
		bad := sql.OpenDB(driver.NewRemoteConnector([]string{addr}, "tls.db", opts))
		_, err := bad.Exec(`INSERT INTO t VALUES (3)`)
		bad.Close()
		t.Logf("%s client: %v", name, err)
		if !errors.Is(err, ErrNoLeader) {
			t.Errorf("%s client: %v, want it refused (ErrNoLeader)", name, err)
		}
		waitFor(t, 5*time.Second, "the refusal to be logged", func() bool { return logs.count("refused a connection") > before })
	}
	o.record(3, errors.New("refused"))

	// A Raft peer in plaintext: the bytes of an AppendEntries RPC.
	before := logs.count("refused a connection")
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	nc.Write([]byte{0, 0x80, 0x80, 0x80})
	nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := nc.Read(make([]byte, 64)); err == nil {
		t.Errorf("a plaintext Raft peer got %d bytes back", n)
	}
	nc.Close()
	waitFor(t, 5*time.Second, "the plaintext peer's refusal to be logged", func() bool { return logs.count("refused a connection") > before })

	// A client's certificate (client authentication only) speaking Raft:
	// a RequestVote of a much higher term would depose the leader.
	before = logs.count("refused a connection")
	term := c.nodes[0].raft.CurrentTerm()
	tc, err := driver.DialTLS(nil, clientOnly)(context.Background(), addr)
	if err != nil {
		t.Fatal(err)
	}
	enc := codec.NewEncoder(tc, &codec.MsgpackHandle{})
	tc.Write([]byte{1}) // rpcRequestVote
	enc.Encode(&raft.RequestVoteRequest{RPCHeader: raft.RPCHeader{ProtocolVersion: raft.ProtocolVersionMax, ID: []byte("999"), Addr: []byte("127.0.0.1:1")},
		Term: term + 1000, LastLogIndex: 1 << 40, LastLogTerm: term + 999})
	tc.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := tc.Read(make([]byte, 64)); err == nil {
		t.Errorf("a client certificate's Raft request got %d bytes back", n)
	}
	tc.Close()
	waitFor(t, 5*time.Second, "the client certificate's Raft connection to be refused and logged", func() bool {
		return logs.count("a Raft connection with a client's certificate") > 0 && logs.count("refused a connection") > before
	})
	for _, n := range c.nodes {
		if got := n.raft.CurrentTerm(); got > term+500 {
			t.Errorf("node %d's term went from %d to %d", n.ID(), term, got)
		}
	}

	// The status and membership operations go over TLS too.
	st, err := driver.RemoteStatus(context.Background(), driver.DialTLS(nil, clientOnly), addr)
	if err != nil || len(st.Members) != 3 || st.LeaderID == 0 {
		t.Errorf("status over TLS: %+v, %v", st, err)
	}
	if _, err := driver.RemoteStatus(context.Background(), nil, addr); err == nil {
		t.Errorf("status in plaintext was answered")
	}
	c.check("tls.db", `SELECT id FROM t`, o)
}
