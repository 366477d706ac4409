package fsm

import "golang.org/x/sys/unix"

const fOFDSetLk = unix.F_OFD_SETLK
