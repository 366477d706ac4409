package torture

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"
)

// Net is one node's side of a network that can lose traffic. It sits
// under the node's Raft transport, through Config.Listener and Config.Dial,
// so faults reach the node exactly where real network faults would.
//
// Every connection starts with a short header naming the slot of the node
// that opened it, so both ends know which peer a connection leads to.
// Drop(slots) makes everything this node sends to those slots vanish, as a
// firewall that drops packets does: writes succeed and nothing arrives,
// and new connections to them hang until their dial times out. Dropping on
// both sides of a link cuts it; on one side only, it loses one direction.
// A connection that lost data is closed when the link heals, so no stream
// resumes with a hole in it.
type Net struct {
	self  int
	slots map[string]int // Raft address → slot

	mu    sync.Mutex
	drop  map[int]bool
	conns map[*faultConn]bool
}

// header is what every connection starts with: magic, then the dialer's slot.
const headerMagic = "dqT1"

var errDropped = errors.New("torture: traffic to this peer is being dropped")

// NewNet returns the network of the node in slot self; slots maps every
// node's Raft address to its slot.
func NewNet(self int, slots map[string]int) *Net {
	return &Net{self: self, slots: slots, drop: map[int]bool{}, conns: map[*faultConn]bool{}}
}

// Drop makes this node's traffic to the given slots vanish from now on,
// and restores it to every other slot.
func (n *Net) Drop(slots []int) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.drop = map[int]bool{}
	for _, s := range slots {
		n.drop[s] = true
	}
	for c := range n.conns {
		if c.lost && !n.drop[c.peer] {
			c.Conn.Close()
			delete(n.conns, c)
		}
	}
}

// Dropped returns the slots this node's traffic to is lost.
func (n *Net) Dropped() []int {
	n.mu.Lock()
	defer n.mu.Unlock()
	var s []int
	for k := range n.drop {
		s = append(s, k)
	}
	return s
}

func (n *Net) dropping(peer int) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.drop[peer]
}

// Dial is Config.Dial: it connects to the node at address and names this one.
func (n *Net) Dial(ctx context.Context, address string) (net.Conn, error) {
	peer, ok := n.slots[address]
	if !ok {
		peer = -1
	}
	// A dropped SYN: the dial hangs until it gives up.
	for n.dropping(peer) {
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("dial %s: %w", address, errDropped)
		case <-time.After(20 * time.Millisecond):
		}
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", address)
	if err != nil {
		return nil, err
	}
	if _, err := c.Write([]byte{headerMagic[0], headerMagic[1], headerMagic[2], headerMagic[3], byte(n.self)}); err != nil {
		c.Close()
		return nil, err
	}
	return n.track(c, peer), nil
}

func (n *Net) track(c net.Conn, peer int) *faultConn {
	fc := &faultConn{Conn: c, n: n, peer: peer}
	n.mu.Lock()
	n.conns[fc] = true
	n.mu.Unlock()
	return fc
}

// Listener is Config.Listener: it accepts connections from l and reads
// which node opened each.
func (n *Net) Listener(l net.Listener) net.Listener {
	fl := &faultListener{Listener: l, n: n, conns: make(chan net.Conn), done: make(chan struct{})}
	go fl.loop()
	return fl
}

type faultListener struct {
	net.Listener
	n     *Net
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
	err   error // set once, before done is closed
}

func (l *faultListener) loop() {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			l.stop(err)
			return
		}
		go func() {
			var h [5]byte
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			if _, err := io.ReadFull(c, h[:]); err != nil || string(h[:4]) != headerMagic {
				c.Close()
				return
			}
			c.SetReadDeadline(time.Time{})
			fc := l.n.track(c, int(h[4]))
			select {
			case l.conns <- fc:
			case <-l.done:
				fc.Close()
			}
		}()
	}
}

func (l *faultListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, l.err
	}
}

func (l *faultListener) Close() error {
	err := l.Listener.Close()
	l.stop(net.ErrClosed)
	return err
}

// stop ends Accept with err: the first stop's, written before done closes.
func (l *faultListener) stop(err error) {
	l.once.Do(func() {
		l.err = err
		close(l.done)
	})
}

// faultConn loses what this node writes to a dropped peer.
type faultConn struct {
	net.Conn
	n    *Net
	peer int
	lost bool // guarded by n.mu: something written was dropped
}

// NetConn gives the TCP connection, as *tls.Conn does.
func (c *faultConn) NetConn() net.Conn { return c.Conn }

func (c *faultConn) Write(p []byte) (int, error) {
	c.n.mu.Lock()
	if c.n.drop[c.peer] {
		c.lost = true
		c.n.mu.Unlock()
		return len(p), nil
	}
	lost := c.lost
	c.n.mu.Unlock()
	if lost {
		return 0, fmt.Errorf("write: %w (connection lost data)", errDropped)
	}
	return c.Conn.Write(p)
}

func (c *faultConn) Close() error {
	c.n.mu.Lock()
	delete(c.n.conns, c)
	c.n.mu.Unlock()
	return c.Conn.Close()
}
