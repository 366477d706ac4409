package fsm

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/godqlite/dqlite/wal"
)

// bootFile records whether the node stopped cleanly, and on which boot of
// the machine it last ran.
const bootFile = "boot"

// readBoot reports whether the databases' files may have lost writes since
// the node last ran: it did not stop cleanly, and the machine restarted
// since (or this system cannot tell). It then records that the node runs,
// not yet stopped cleanly.
func readBoot(dir string) (lost string, err error) {
	path := filepath.Join(dir, appliedDir, bootFile)
	b, rerr := os.ReadFile(path)
	now := bootID()
	switch {
	case rerr != nil:
		lost = "no record of how the node last stopped"
	case len(b) > 0 && b[0] == '1':
		// stopped cleanly: every write was synced
	case now == "":
		lost = "the node did not stop cleanly, and this system cannot tell whether the machine restarted since"
	case string(b[1:]) != now:
		lost = "the node did not stop cleanly, and the machine restarted since: writes that were not synced may be lost"
	}
	if err := os.MkdirAll(filepath.Join(dir, appliedDir), 0o755); err != nil {
		return "", err
	}
	return lost, writeFileSync(path, []byte("0"+now))
}

// writeBoot records a clean stop: call it once every file is synced.
func writeBoot(dir string) error {
	return writeFileSync(filepath.Join(dir, appliedDir, bootFile), []byte("1"+bootID()))
}

// recovered is what start found of one database.
type recovered struct {
	pageSize uint32
	index    uint64 // the Raft index its files hold
	last     record // the record that says so (the header if none)
}

// recoverDB finds the Raft index that the files of database name hold,
// from its applied log and its WAL, and makes the files hold exactly that:
// it cuts off the WAL's frames of a transaction that has no record (one
// whose process died between its frames and its record: Raft applies it
// again) and removes the wal-index, which SQLite rebuilds from the WAL. It
// returns why the files cannot be trusted, if they cannot.
//
// The rules rest on two orders kept while the node runs: a record is
// written after its transaction's frames, and before the transaction is
// published (so before any checkpoint or later transaction); and a WAL
// starts a new generation only once every frame of the old one is in the
// database file. So the WAL's last recorded commit frame is the state;
// with none, the database file alone is, at the last record's index.
func recoverDB(dir, name string) (rec recovered, untrusted string, err error) {
	path := filepath.Join(dir, name)
	recs, err := readRecords(appliedPath(dir, name))
	if errors.Is(err, os.ErrNotExist) {
		return rec, "it has no applied log", nil
	}
	if err != nil {
		return rec, "", err
	}
	if len(recs) == 0 || recs[0].kind != recHeader || !wal.ValidPageSize(int(recs[0].pageSize)) {
		return rec, "its applied log has no valid header", nil
	}
	rec.pageSize = recs[0].pageSize
	if why := checkDBFile(path, rec.pageSize); why != "" {
		return rec, why, nil
	}
	hdr, commits, werr := walCommits(path + "-wal")
	if werr != nil && !errors.Is(werr, wal.ErrFormat) {
		return rec, "", werr
	}
	validWAL := werr == nil
	if validWAL && hdr.PageSize != rec.pageSize {
		return rec, fmt.Sprintf("its WAL has page size %d, not %d", hdr.PageSize, rec.pageSize), nil
	}
	keep := -1
	if validWAL {
		for i := len(recs) - 1; i >= 1; i-- {
			r := recs[i]
			if r.kind == recCommit && r.frame != 0 && r.salt == hdr.Salt {
				if _, found := slices.BinarySearch(commits, r.frame); found {
					keep = i
					break
				}
			}
		}
	}
	if keep >= 0 {
		// Frames after the recorded commit belong to a transaction that
		// was never recorded, so never published or checkpointed.
		if err := os.Truncate(path+"-wal", wal.FrameOffset(recs[keep].frame+1, int(rec.pageSize))); err != nil {
			return rec, "", err
		}
	} else {
		keep = len(recs) - 1
		last := recs[keep]
		if validWAL && last.frame != 0 && last.salt == hdr.Salt {
			return rec, fmt.Sprintf("its applied log names commit frame %d of the WAL, which the WAL does not hold", last.frame), nil
		}
		st, err := os.Stat(path)
		hasContent := err == nil && st.Size() > 0
		switch {
		case keep == 0 && hasContent && st.Size() > int64(rec.pageSize):
			// Creating a database writes its first page, and only that.
			return rec, "its file has content that no record accounts for", nil
		case keep > 0 && !hasContent:
			return rec, fmt.Sprintf("its applied log names index %d, but its file is empty", last.index), nil
		}
		// Any frames of a newer generation were never recorded.
		if err := os.Remove(path + "-wal"); err != nil && !errors.Is(err, os.ErrNotExist) {
			return rec, "", err
		}
	}
	if err := os.Remove(path + "-shm"); err != nil && !errors.Is(err, os.ErrNotExist) {
		return rec, "", err
	}
	rec.last = recs[keep]
	rec.index = recs[keep].index
	return rec, "", nil
}

// checkDBFile reports why the database file at path is not one of page
// size pageSize, or "" (a missing or empty file is fine).
func checkDBFile(path string, pageSize uint32) string {
	st, err := os.Stat(path)
	if errors.Is(err, os.ErrNotExist) || err == nil && st.Size() == 0 {
		return ""
	}
	if err != nil {
		return err.Error()
	}
	if !isSQLite(path) {
		return "its file is not an SQLite database"
	}
	f, err := os.Open(path)
	if err != nil {
		return err.Error()
	}
	defer f.Close()
	var b [2]byte
	if _, err := f.ReadAt(b[:], 16); err != nil {
		return err.Error()
	}
	ps := uint32(b[0])<<8 | uint32(b[1])
	if ps == 1 {
		ps = 65536
	}
	if ps != pageSize {
		return fmt.Sprintf("its file has page size %d, not %d", ps, pageSize)
	}
	return ""
}

// recoverAll recovers every database in dir (see recoverDB). untrusted
// says why some files cannot be trusted, if so.
func recoverAll(dir string) (dbs map[string]recovered, untrusted string, err error) {
	lost, err := readBoot(dir)
	if err != nil {
		return nil, "", err
	}
	names := map[string]bool{}
	_, content, err := scanDatabases(dir)
	if err != nil {
		return nil, "", err
	}
	for _, f := range content {
		names[strings.TrimSuffix(f, "-wal")] = true
	}
	entries, _ := os.ReadDir(filepath.Join(dir, appliedDir))
	for _, e := range entries {
		if n, ok := strings.CutSuffix(e.Name(), ".rec"); ok {
			names[n] = true
		}
	}
	if len(names) > 0 && lost != "" {
		return nil, lost, nil
	}
	dbs = map[string]recovered{}
	sorted := make([]string, 0, len(names))
	for n := range names {
		sorted = append(sorted, n)
	}
	slices.Sort(sorted)
	for _, name := range sorted {
		if ValidateName(name) != nil {
			return nil, fmt.Sprintf("%s is not a database name", name), nil
		}
		r, why, err := recoverDB(dir, name)
		if err != nil {
			return nil, "", fmt.Errorf("recover %s: %w", name, err)
		}
		if why != "" {
			return nil, fmt.Sprintf("database %s: %s", name, why), nil
		}
		dbs[name] = r
	}
	return dbs, "", nil
}

// removeAll removes every database of dir and its applied log.
func removeAll(dir string) error {
	if err := removeDatabases(dir); err != nil {
		return err
	}
	entries, _ := os.ReadDir(filepath.Join(dir, appliedDir))
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), ".rec") || strings.HasSuffix(e.Name(), ".rec.tmp") {
			if err := os.Remove(filepath.Join(dir, appliedDir, e.Name())); err != nil {
				return err
			}
		}
	}
	return nil
}
