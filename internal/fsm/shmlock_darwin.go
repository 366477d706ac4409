package fsm

// fOFDSetLk is macOS's F_OFD_SETLK, which golang.org/x/sys/unix does not
// name (sys/fcntl.h).
const fOFDSetLk = 90
