//go:build unix

package torture

import (
	"os"
	"syscall"
)

// supported says whether this platform can run the suite: it needs to hand
// listeners to child processes and to stop and continue them.
const supported = true

func pause(p *os.Process) error  { return p.Signal(syscall.SIGSTOP) }
func resume(p *os.Process) error { return p.Signal(syscall.SIGCONT) }
func terminate(p *os.Process) error {
	return p.Signal(syscall.SIGTERM)
}

// dump makes a stuck node print its goroutines to its log and exit.
func dump(p *os.Process) error { return p.Signal(syscall.SIGQUIT) }
