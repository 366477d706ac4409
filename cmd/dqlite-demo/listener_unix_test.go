//go:build unix

package main

import (
	"net"
	"syscall"
	"testing"
	"time"
)

// A listener whose descriptor a child left in blocking mode can be closed
// under a waiting Accept once nonBlocking has run (verify relies on it).
func TestNonBlocking_ListenerClosesUnderAccept(t *testing.T) {
	l, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	rc, err := l.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	rc.Control(func(fd uintptr) { syscall.SetNonblock(int(fd), false) }) // what starting a child does
	if err := nonBlocking(l); err != nil {
		t.Fatal(err)
	}
	accepted := make(chan error, 1)
	go func() {
		_, err := l.Accept()
		accepted <- err
	}()
	time.Sleep(50 * time.Millisecond) // let Accept wait
	closed := make(chan error, 1)
	go func() { closed <- l.Close() }()
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("Close hung behind a blocking Accept")
	}
	if err := <-accepted; err == nil {
		t.Fatal("Accept returned a connection")
	}
}
