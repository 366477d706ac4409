//go:build race

package main

// The race detector slows everything: Raft timeouts are longer under it.
const raceEnabled = true
