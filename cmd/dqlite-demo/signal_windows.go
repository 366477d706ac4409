package main

import (
	"net"
	"os"
)

// terminate stops a node: Windows has no SIGTERM to send, so it is killed.
func terminate(p *os.Process) error { return p.Kill() }

// nonBlocking has nothing to do on Windows, where the demo cannot hand
// listeners to its children.
func nonBlocking(*net.TCPListener) error { return nil }
