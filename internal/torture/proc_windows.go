package torture

import (
	"errors"
	"os"
)

// supported says whether this platform can run the suite: Windows can
// neither hand listeners to child processes nor stop and continue them.
const supported = false

var errUnsupported = errors.New("torture: not supported on Windows")

func pause(*os.Process) error       { return errUnsupported }
func resume(*os.Process) error      { return errUnsupported }
func terminate(p *os.Process) error { return p.Kill() }

func dump(p *os.Process) error { return p.Kill() }
