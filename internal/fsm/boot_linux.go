package fsm

import (
	"os"
	"strings"
)

// bootID names the machine's current boot: it changes when the machine
// restarts, so a node can tell a process crash (its files kept every write)
// from a machine crash (unsynced writes may be lost).
func bootID() string {
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}
