//go:build !windows

package faults

// osDiskErrs are the operating system's own codes for a full disk, beyond
// ENOSPC.
var osDiskErrs []error
