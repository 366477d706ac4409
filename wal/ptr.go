package wal

import "unsafe"

// ptr returns a pointer to the 4-byte-aligned word at b[off:].
func ptr(b []byte, off int) unsafe.Pointer { return unsafe.Pointer(&b[off]) }
