//go:build !(linux || darwin || freebsd || netbsd || openbsd || dragonfly)

package driver

import "net"

// peerSpoke cannot look at a socket without waiting on this system: the
// caller waits briefly for a byte instead.
func peerSpoke(net.Conn) (spoke, ok bool) { return false, false }
