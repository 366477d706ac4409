//go:build darwin || freebsd || netbsd || openbsd || dragonfly

package fsm

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// bootID names the machine's current boot (see boot_linux.go): the time it
// booted.
func bootID() string {
	tv, err := unix.SysctlTimeval("kern.boottime")
	if err != nil {
		return ""
	}
	return fmt.Sprintf("boottime:%d.%06d", tv.Sec, tv.Usec)
}
