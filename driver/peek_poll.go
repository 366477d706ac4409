//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package driver

import (
	"net"
	"syscall"
)

// peerSpoke reports, without waiting, whether the peer closed c or sent
// it something: on an idle session either means it cannot be used. ok is
// false when c gives no access to its socket.
func peerSpoke(c net.Conn) (spoke, ok bool) {
	sc, ok := socketOf(c)
	if !ok {
		return false, false
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return false, false
	}
	var rerr error
	err = raw.Read(func(fd uintptr) bool {
		var b [1]byte
		_, _, rerr = syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		return true // never wait for the socket
	})
	switch {
	case err != nil:
		return true, true
	case rerr == syscall.EAGAIN || rerr == syscall.EWOULDBLOCK:
		return false, true
	case rerr == syscall.EINTR:
		return false, false
	}
	return true, true // a byte, the end of the stream, or an error
}
