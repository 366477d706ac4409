package driver

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/godqlite/dqlite/internal/errs"
	"github.com/godqlite/dqlite/internal/wire"
)

// target is how a client reaches the leader: the addresses to try and how
// to dial them.
type target struct {
	dial    func(ctx context.Context, address string) (net.Conn, error)
	addrs   func() []string // known nodes, the leader first when known
	timeout time.Duration   // how long to look for the leader when ctx has no deadline

	mu   sync.Mutex
	hint string // the leader, as a node last said
}

// session is one connection of the client protocol to the leader, with a
// connection to the database open there.
type session struct {
	nc     net.Conn
	br     *bufio.Reader
	w      wire.Writer
	buf    []byte
	wmu    sync.Mutex // one frame at a time: a request, or an interrupt from a cancelled context
	broken error

	setupVersion uint64 // of the connection settings run on it (see rconn.setup)
}

// connect finds the leader and opens a session to database db on it. It
// retries, until ctx or t.timeout runs out, whatever cannot have run
// anything: a node that does not answer, one that is not the leader.
func (t *target) connect(ctx context.Context, db string) (*session, error) {
	if _, ok := ctx.Deadline(); !ok && t.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, t.timeout)
		defer cancel()
	}
	var tried []string
	for wait := 5 * time.Millisecond; ; wait = min(2*wait, 200*time.Millisecond) {
		t.mu.Lock()
		cands := []string{}
		if t.hint != "" {
			cands = append(cands, t.hint)
		}
		t.mu.Unlock()
		for _, a := range t.addrs() {
			if len(cands) == 0 || a != cands[0] {
				cands = append(cands, a)
			}
		}
		for _, addr := range cands {
			s, leader, err := t.hello(ctx, addr, db)
			if err == nil {
				return s, nil
			}
			var re *RemoteError
			if errors.As(err, &re) && !errors.Is(err, errs.ErrNotLeader) && !errors.Is(err, errs.ErrClosed) {
				return nil, err // the leader answered: no such database, a bad name…
			}
			tried = append(tried, fmt.Sprintf("%s: %v", addr, err))
			if leader != "" && leader != addr {
				t.mu.Lock()
				t.hint = leader
				t.mu.Unlock()
				break // try the leader it named first
			}
		}
		select {
		case <-ctx.Done():
			if len(tried) > 5 {
				tried = tried[len(tried)-5:]
			}
			return nil, fmt.Errorf("%w: no leader answered in time (last tries: %v) (%w)", errs.ErrNoLeader, tried, ctx.Err())
		case <-time.After(wait):
		}
	}
}

// hello dials addr and asks for database db. A node that is not the
// leader answers with the leader it knows of, returned as leader.
func (t *target) hello(ctx context.Context, addr, db string) (s *session, leader string, err error) {
	dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	nc, err := t.dial(dctx, addr)
	if err != nil {
		return nil, "", err
	}
	s = &session{nc: nc, br: bufio.NewReaderSize(nc, 64<<10)}
	defer func() {
		if err != nil {
			nc.Close()
		}
	}()
	if _, err := nc.Write([]byte{wire.Magic, wire.Version}); err != nil {
		return nil, "", err
	}
	s.w.Reset(wire.Hello)
	s.w.String(db)
	typ, r, err := s.call(ctx)
	if err != nil {
		return nil, "", err
	}
	switch typ {
	case wire.Welcome:
		isLeader, _, addr := r.Bool(), r.Uint(), r.String()
		if err := r.End(); err != nil {
			return nil, "", err
		}
		if !isLeader {
			return nil, addr, fmt.Errorf("%w (it names %q)", errs.ErrNotLeader, addr)
		}
		return s, addr, nil
	case wire.Failure:
		_, _ = r.Bool(), r.Uint()
		return nil, "", getError(r)
	}
	return nil, "", fmt.Errorf("%w: answer of type %d to hello", wire.ErrMalformed, typ)
}

// call sends the request in s.w and reads its answer. A cancelled ctx
// sends an interrupt: the node stops the request and answers with why; if
// it does not answer within a few seconds, the connection is cut.
func (s *session) call(ctx context.Context) (wire.Type, *wire.Reader, error) {
	if s.broken != nil {
		return 0, nil, s.broken
	}
	s.wmu.Lock()
	_, err := s.w.WriteTo(s.nc)
	s.wmu.Unlock()
	if err != nil {
		if errors.Is(err, wire.ErrTooLarge) {
			return 0, nil, err // nothing was sent
		}
		return 0, nil, s.fail(err)
	}
	if ctx.Done() != nil {
		var mu sync.Mutex
		var cut *time.Timer
		finished := false
		stop := context.AfterFunc(ctx, func() {
			mu.Lock()
			defer mu.Unlock()
			if finished {
				return
			}
			s.wmu.Lock()
			var w wire.Writer
			w.Reset(wire.Interrupt)
			w.WriteTo(s.nc)
			s.wmu.Unlock()
			cut = time.AfterFunc(5*time.Second, func() { s.nc.SetReadDeadline(time.Now()) })
		})
		defer func() {
			stop()
			mu.Lock()
			finished = true
			if cut != nil && !cut.Stop() {
				// The deadline was cut as the answer came: the session
				// cannot be read again.
				s.fail(errors.New("no answer within 5s of an interrupt"))
			}
			mu.Unlock()
		}()
	}
	typ, r, buf, err := wire.ReadFrame(s.br, s.buf, wire.MaxFrame)
	s.buf = buf
	if err != nil {
		return 0, nil, s.fail(err)
	}
	return typ, r, nil
}

func (s *session) fail(err error) error {
	if s.broken == nil {
		s.broken = err
		s.nc.Close()
	}
	return s.broken
}

// idleBroken reports whether the node closed the connection while it was
// idle (the leader stopped or was killed): then a request could not have
// reached it, and opening a new session is safe.
func (s *session) idleBroken() bool {
	if s.broken != nil {
		return true
	}
	if s.br.Buffered() > 0 {
		return true // an idle session has nothing to read
	}
	if spoke, ok := peerSpoke(s.nc); ok {
		if spoke {
			s.fail(errors.New("connection to the leader closed while idle"))
		}
		return spoke
	}
	// No look at the socket without waiting: wait a moment for a byte
	// (a wait of under a millisecond, which the poller rounds up to one).
	s.nc.SetReadDeadline(time.Now().Add(50 * time.Microsecond))
	_, err := s.br.Peek(1)
	s.nc.SetReadDeadline(time.Time{})
	if err == nil || !errors.Is(err, os.ErrDeadlineExceeded) {
		s.fail(fmt.Errorf("connection to the leader closed while idle: %v", err))
		return true
	}
	return false
}

// socketOf finds the socket under c, through wrappers that give their
// connection (NetConn, as *tls.Conn does).
func socketOf(c net.Conn) (syscall.Conn, bool) {
	for range 8 {
		if sc, ok := c.(syscall.Conn); ok {
			return sc, true
		}
		u, ok := c.(interface{ NetConn() net.Conn })
		if !ok {
			return nil, false
		}
		c = u.NetConn()
	}
	return nil, false
}

func (s *session) close() {
	s.fail(errors.New("session closed"))
}

// Touch opens, and at once closes, a session to database name on the
// leader that b knows of: the leader creates the database if it does not
// exist.
func Touch(ctx context.Context, b Backend, name string) error {
	s, err := leaderTarget(b).connect(ctx, name)
	if err != nil {
		return err
	}
	s.close()
	return nil
}

// leaderTarget reaches the leader that b knows of.
func leaderTarget(b Backend) *target {
	return &target{
		dial: b.Dial,
		addrs: func() []string {
			if _, addr := b.Leader(); addr != "" {
				return []string{addr}
			}
			return nil
		},
		timeout: b.ApplyTimeout(),
	}
}
