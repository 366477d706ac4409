//go:build !linux

package main

import "os/exec"

// dieWithParent does nothing where the kernel cannot kill a child when its
// parent dies: there a node outlives a demo that was itself killed, and
// the next run's nodes find their data directories locked until it exits.
func dieWithParent(*exec.Cmd) {}
