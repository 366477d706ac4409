package fsm

import (
	"fmt"
	"strings"
	"unicode/utf8"

	"github.com/godqlite/dqlite/internal/errs"
)

// MaxNameLen is the longest database name, in bytes: with "-journal"
// after it, a file name stays within what every file system takes.
const MaxNameLen = 200

// reservedNames are the files and directories a node keeps beside its
// databases.
var reservedNames = []string{"raft.db", "raft-wal", "snapshots", "applied", "lock"}

// ValidateName reports whether name can be a database: a plain file name
// that is the same file on every operating system a node may run on, and
// none of the node's own files. Every node checks it again when it applies
// an Open entry, so a bad name never reaches the disk.
func ValidateName(name string) error {
	bad := func(why string) error { return fmt.Errorf("%w %q: %s", errs.ErrInvalidName, name, why) }
	switch {
	case name == "":
		return bad("empty")
	case len(name) > MaxNameLen:
		return bad(fmt.Sprintf("longer than %d bytes", MaxNameLen))
	case !utf8.ValidString(name):
		return bad("not UTF-8")
	case name == "." || name == "..":
		return bad("not a file name")
	case strings.HasSuffix(name, ".") || strings.HasSuffix(name, " "):
		return bad("ends with a dot or a space")
	}
	for _, r := range name {
		if r < 0x20 || r == 0x7f || strings.ContainsRune(`/\:*?"<>|`, r) {
			return bad(fmt.Sprintf("holds %q: no separators, control characters or :*?\"<>|", r))
		}
	}
	lower := strings.ToLower(name)
	for _, r := range reservedNames {
		if lower == r {
			return bad("the node keeps its own " + r + " there")
		}
	}
	for _, suffix := range []string{"-wal", "-shm", "-journal"} {
		if strings.HasSuffix(lower, suffix) {
			return bad("ends with " + suffix + ", like SQLite's own files")
		}
	}
	stem, _, _ := strings.Cut(lower, ".")
	switch stem {
	case "con", "prn", "aux", "nul",
		"com1", "com2", "com3", "com4", "com5", "com6", "com7", "com8", "com9",
		"lpt1", "lpt2", "lpt3", "lpt4", "lpt5", "lpt6", "lpt7", "lpt8", "lpt9":
		return bad("a device name on Windows")
	}
	return nil
}
