package dqlite

import (
	"context"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/raft"
)

// streamLayer carries Raft's connections: accepted on a listener, dialed
// with a function (by default plain TCP). It tracks both kinds: closing it
// closes those it accepted, which hashicorp/raft's transport leaves open,
// and closeConns cuts every one at shutdown.
type streamLayer struct {
	net.Listener
	dial func(ctx context.Context, address string) (net.Conn, error)

	mu     sync.Mutex
	conns  map[*trackedConn]bool // accepted and dialed, open
	cut    bool                  // closeConns ran: no new connection
	closed bool
}

var _ raft.StreamLayer = (*streamLayer)(nil)

func newStreamLayer(cfg Config) (*streamLayer, error) {
	s := &streamLayer{Listener: cfg.Listener, dial: cfg.Dial, conns: map[*trackedConn]bool{}}
	if s.Listener == nil {
		l, err := net.Listen("tcp", cfg.Address)
		if err != nil {
			return s, err
		}
		s.Listener = l
	}
	if s.dial == nil {
		var d net.Dialer
		s.dial = func(ctx context.Context, address string) (net.Conn, error) {
			return d.DialContext(ctx, "tcp", address)
		}
	}
	return s, nil
}

func (s *streamLayer) Accept() (net.Conn, error) {
	c, err := s.Listener.Accept()
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || s.cut {
		c.Close()
		return nil, net.ErrClosed
	}
	tc := &trackedConn{Conn: c, s: s}
	s.conns[tc] = true
	return tc, nil
}

func (s *streamLayer) Close() error {
	s.mu.Lock()
	s.closed = true
	for c := range s.conns {
		if !c.dialed {
			c.Conn.Close()
			delete(s.conns, c)
		}
	}
	s.mu.Unlock()
	return s.Listener.Close()
}

// closeConns closes every connection, accepted or dialed, so that Raft's
// RPCs in flight fail now rather than at their deadlines.
func (s *streamLayer) closeConns() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.conns {
		c.Conn.Close()
	}
	clear(s.conns)
	s.cut = true
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
