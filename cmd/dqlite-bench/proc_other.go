//go:build !linux

package main

import "os/exec"

// dieWithParent does nothing where the kernel cannot kill a child when its
// parent dies.
func dieWithParent(*exec.Cmd) {}
