package crashpoint

import "os"

// kill ends the process at once, as TerminateProcess does.
func kill() { os.Exit(137) }
