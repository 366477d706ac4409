package faults

import "syscall"

// osDiskErrs are the operating system's own codes for a full disk.
var osDiskErrs = []error{
	syscall.Errno(112), // ERROR_DISK_FULL
	syscall.Errno(39),  // ERROR_HANDLE_DISK_FULL
}
