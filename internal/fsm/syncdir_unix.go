//go:build !windows

package fsm

import "os"

// syncDir makes the creation, removal and renaming of files in dir
// durable.
func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = f.Sync()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}
