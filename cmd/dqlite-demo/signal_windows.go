package main

import "os"

// terminate stops a node: Windows has no SIGTERM to send, so it is killed.
func terminate(p *os.Process) error { return p.Kill() }
