package dqlite

import (
	"context"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/raft"
)

// streamLayer carries Raft's connections: accepted on a listener, dialed
// with a function (by default plain TCP). Closing it also closes the
// connections it accepted, which hashicorp/raft's transport leaves open.
type streamLayer struct {
	net.Listener
	dial func(ctx context.Context, address string) (net.Conn, error)

	mu       sync.Mutex
	accepted map[net.Conn]bool
	closed   bool
}

var _ raft.StreamLayer = (*streamLayer)(nil)

func newStreamLayer(cfg Config) (*streamLayer, error) {
	s := &streamLayer{Listener: cfg.Listener, dial: cfg.Dial, accepted: map[net.Conn]bool{}}
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
	if s.closed {
		c.Close()
		return nil, net.ErrClosed
	}
	tc := &trackedConn{Conn: c, s: s}
	s.accepted[tc] = true
	return tc, nil
}

func (s *streamLayer) Close() error {
	s.mu.Lock()
	s.closed = true
	for c := range s.accepted {
		c.(*trackedConn).Conn.Close()
	}
	clear(s.accepted)
	s.mu.Unlock()
	return s.Listener.Close()
}

type trackedConn struct {
	net.Conn
	s *streamLayer
}

func (c *trackedConn) Close() error {
	c.s.mu.Lock()
	delete(c.s.accepted, c)
	c.s.mu.Unlock()
	return c.Conn.Close()
}

func (s *streamLayer) Dial(address raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return s.dial(ctx, string(address))
}
