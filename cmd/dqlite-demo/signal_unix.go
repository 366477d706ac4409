//go:build unix

package main

import (
	"os"
	"syscall"
)

// terminate asks a node to stop cleanly.
func terminate(p *os.Process) error { return p.Signal(syscall.SIGTERM) }
