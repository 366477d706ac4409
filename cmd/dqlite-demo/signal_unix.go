//go:build unix

package main

import (
	"net"
	"os"
	"syscall"
)

// terminate asks a node to stop cleanly.
func terminate(p *os.Process) error { return p.Signal(syscall.SIGTERM) }

// nonBlocking puts the listener's descriptor back in non-blocking mode.
func nonBlocking(l *net.TCPListener) error {
	rc, err := l.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = syscall.SetNonblock(int(fd), true) }); err != nil {
		return err
	}
	return serr
}
