//go:build !linux && !darwin && !freebsd && !netbsd && !openbsd && !dragonfly

package fsm

// bootID cannot name the machine's boot here: after a stop that was not
// clean, start then cannot tell a process crash from a machine crash and
// rebuilds the databases from the snapshot and the log.
func bootID() string { return "" }
