package dqlite

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/raft"

	"github.com/godqlite/dqlite/driver"
	"github.com/godqlite/dqlite/internal/wire"
)

// streamLayer carries Raft's connections: accepted on a listener, dialed
// with a function (by default plain TCP). It tracks both kinds: closing it
// closes those it accepted, which hashicorp/raft's transport leaves open,
// and closeConns cuts every one at shutdown.
//
// The same listener takes the client protocol's connections (forwarded
// writes, remote clients): their first byte is wire.Magic, where a Raft
// connection's is an RPC type (0 to 4). Each accepted connection is
// routed by that byte, read on a goroutine of its own so that a slow
// client holds up no one; client connections go to serve.
type streamLayer struct {
	net.Listener
	dial  func(ctx context.Context, address string) (net.Conn, error)
	serve func(net.Conn) // takes a client protocol connection; set before Start
	tls   *tls.Config    // Config.TLS made a server's configuration; nil: plaintext
	log   *slog.Logger

	refusalMu       sync.Mutex
	refusalWindow   time.Time // start of the second whose refusals are counted
	refusalsLogged  int       // in that second
	refusalsSkipped int       // refused but not logged, since the last line logged

	raftConns chan net.Conn // routed to Raft, for Accept
	done      chan struct{} // closed by Close
	wg        sync.WaitGroup

	mu     sync.Mutex
	conns  map[*trackedConn]bool // accepted and dialed, open
	cut    bool                  // closeConns ran: no new connection
	closed bool
}

var _ raft.StreamLayer = (*streamLayer)(nil)

func newStreamLayer(cfg Config) (*streamLayer, error) {
	s := &streamLayer{Listener: cfg.Listener, dial: cfg.Dial, conns: map[*trackedConn]bool{},
		raftConns: make(chan net.Conn), done: make(chan struct{})}
	if s.Listener == nil {
		l, err := net.Listen("tcp", cfg.Address)
		if err != nil {
			return s, err
		}
		s.Listener = l
	}
	s.dial = driver.OrTCP(s.dial)
	if cfg.TLS != nil {
		s.tls, s.log = serverTLS(cfg.TLS), cfg.Logger
		s.dial = driver.DialTLS(s.dial, cfg.TLS)
	}
	return s, nil
}

// serverTLS is c for accepting: every peer and client must show a
// certificate that the configuration's CAs signed.
func serverTLS(c *tls.Config) *tls.Config {
	c = c.Clone()
	c.ClientAuth = tls.RequireAndVerifyClientCert
	if c.ClientCAs == nil {
		c.ClientCAs = c.RootCAs
	}
	return c
}

// start accepts connections until Close.
func (s *streamLayer) start() {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := s.Listener.Accept()
			if err != nil {
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() {
					continue
				}
				return
			}
			s.mu.Lock()
			if s.closed || s.cut {
				s.mu.Unlock()
				c.Close()
				continue
			}
			tc := &trackedConn{Conn: c, s: s}
			s.conns[tc] = true
			s.wg.Add(1)
			s.mu.Unlock()
			go s.route(tc)
		}
	}()
}

// route reads a connection's first byte and hands it to Raft or serve.
func (s *streamLayer) route(tc *trackedConn) {
	defer s.wg.Done()
	var c net.Conn = tc
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if s.tls != nil {
		t := tls.Server(tc, s.tls)
		if err := t.Handshake(); err != nil {
			// A plaintext peer, an unknown certificate, no certificate.
			s.refused(tc, "TLS handshake failed", err)
			tc.Close()
			return
		}
		c = t
	}
	var first [1]byte
	if _, err := io.ReadFull(c, first[:]); err != nil {
		c.Close()
		return
	}
	c.SetDeadline(time.Time{})
	if first[0] == wire.Magic {
		s.serve(c)
		return
	}
	if t, ok := c.(*tls.Conn); ok && !nodeCertificate(t.ConnectionState(), s.tls.ClientCAs) {
		// A client's certificate speaks the client protocol only: as a
		// Raft peer it could depose the leader or write pages.
		s.refused(tc, "a Raft connection with a client's certificate (it does not allow server authentication)", nil)
		tc.Close()
		return
	}
	select {
	case s.raftConns <- &peekedConn{Conn: c, first: first[:]}:
	case <-s.done:
		c.Close()
	}
}

// nodeCertificate reports whether the peer's certificate is a node's: one
// whose chain to roots allows server authentication (as every node's must,
// since it accepts connections with it). A certificate, or an
// intermediate, that names only client authentication is a client's. One
// that names no usage at all allows every use, as x509 has it.
func nodeCertificate(st tls.ConnectionState, roots *x509.CertPool) bool {
	if len(st.PeerCertificates) == 0 {
		return false
	}
	inter := x509.NewCertPool()
	for _, c := range st.PeerCertificates[1:] {
		inter.AddCert(c)
	}
	_, err := st.PeerCertificates[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
	return err == nil
}

// refused logs a refused connection: at most 10 a second (a port scan
// would flood the log; the next line logged counts those left out), and
// none once the node is closing.
func (s *streamLayer) refused(c net.Conn, why string, err error) {
	select {
	case <-s.done:
		return
	default:
	}
	s.refusalMu.Lock()
	now := time.Now()
	if now.Sub(s.refusalWindow) >= time.Second {
		s.refusalWindow, s.refusalsLogged = now, 0
	}
	if s.refusalsLogged >= 10 {
		s.refusalsSkipped++
		s.refusalMu.Unlock()
		return
	}
	s.refusalsLogged++
	skipped := s.refusalsSkipped
	s.refusalsSkipped = 0
	s.refusalMu.Unlock()
	args := []any{"from", c.RemoteAddr().String()}
	if err != nil {
		args = append(args, "err", err)
	}
	if skipped > 0 {
		args = append(args, "not_logged_before", skipped)
	}
	s.log.Warn("refused a connection: "+why, args...)
}

// Accept gives Raft its connections.
func (s *streamLayer) Accept() (net.Conn, error) {
	select {
	case c := <-s.raftConns:
		return c, nil
	case <-s.done:
		return nil, net.ErrClosed
	}
}

// Close stops accepting, closes the accepted connections and waits for
// the routing goroutines.
func (s *streamLayer) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	close(s.done)
	for c := range s.conns {
		if !c.dialed {
			closeNow(c.Conn)
			delete(s.conns, c)
		}
	}
	s.mu.Unlock()
	err := s.Listener.Close()
	s.wg.Wait()
	return err
}

// peekedConn gives back the byte that routing read first.
type peekedConn struct {
	net.Conn
	first []byte
}

func (p *peekedConn) Read(b []byte) (int, error) {
	if len(p.first) > 0 && len(b) > 0 {
		n := copy(b, p.first)
		p.first = p.first[n:]
		return n, nil
	}
	return p.Conn.Read(b)
}

// closeConns closes every connection, accepted or dialed, so that Raft's
// RPCs in flight fail now rather than at their deadlines.
func (s *streamLayer) closeConns() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.conns {
		closeNow(c.Conn)
	}
	clear(s.conns)
	s.cut = true
}

// closeNow closes c without a TLS close_notify, which could wait seconds
// on a peer that reads nothing.
func closeNow(c net.Conn) {
	if t, ok := c.(*tls.Conn); ok {
		t.NetConn().Close()
		return
	}
	c.Close()
}

type trackedConn struct {
	net.Conn
	s      *streamLayer
	dialed bool // by this node (else accepted)
}

func (c *trackedConn) Close() error {
	c.s.mu.Lock()
	delete(c.s.conns, c)
	c.s.mu.Unlock()
	return c.Conn.Close()
}

func (s *streamLayer) Dial(address raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	if strings.HasPrefix(string(address), spareMark) {
		return nil, errSpare
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	c, err := s.dial(ctx, string(address))
	if err != nil {
		return nil, err
	}
	tc := &trackedConn{Conn: c, s: s, dialed: true}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cut {
		c.Close()
		return nil, net.ErrClosed
	}
	s.conns[tc] = true
	return tc, nil
}
