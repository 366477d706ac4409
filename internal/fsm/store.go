package fsm

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"

	"github.com/godqlite/dqlite/internal/crashpoint"
)

// Store is the node's raft.SnapshotStore. It keeps one copy of every
// database as of the latest snapshot (the base), which a snapshot updates
// with only the pages that changed since the previous one: taking a
// snapshot costs what changed, not what exists. Raft receives the whole
// copy only to send it to a node that needs it.
//
// On disk, in its directory:
//
//	CURRENT                 the name of the base directory
//	base-N/meta.json        the base's Meta
//	base-N/db-NAME          database NAME's pages, as in its file
//	base-N/delta-K.pages    a snapshot not yet folded into the base: the
//	base-N/delta-K.json     changed pages, and its Meta (written last)
//	tmp-K, tmp-K.pages      snapshots being received or written
//
// Crash safety: a snapshot exists once the file that names it is renamed
// into place (CURRENT for a full one, delta-K.json for a delta), after
// everything it names was synced. Folding a delta into the base writes
// its pages in place, syncs, renames the delta's Meta over the base's,
// then removes the delta: a crash in between folds it again at the next
// start, which writes the same pages. Whatever else a crash leaves is
// removed when the store opens.
type Store struct {
	dir    string
	logger *slog.Logger
	rate   int64 // bytes per second a full stream is served at; <= 0: unlimited

	mu      sync.Mutex
	base    string // current base directory name, or ""
	meta    Meta   // the base's
	deltas  []Meta // snapshots not yet folded into the base, oldest first
	readers int    // open streams of the base: no fold meanwhile
	seq     uint64
	gen     uint64 // counts changes of base, so that a delta taken before one is refused

	latestIndex atomic.Uint64 // Raft index of the latest snapshot, read without mu
	streams     atomic.Int32  // open streams (readers), read without mu
}

// Meta describes a snapshot.
type Meta struct {
	Raft raft.SnapshotMeta
	DBs  []DBMeta
	Seq  uint64 // of a delta: its file names
}

var _ raft.SnapshotStore = (*Store)(nil)

// OpenStore opens (creating it if needed) the snapshot store in dir and
// finishes or removes what a crash left.
func OpenStore(dir string, logger *slog.Logger, rate int64) (*Store, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	s := &Store{dir: dir, logger: logger, rate: rate}
	if b, err := os.ReadFile(filepath.Join(dir, "CURRENT")); err == nil {
		s.base = strings.TrimSpace(string(b))
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	names, err := s.list(dir)
	if err != nil {
		return nil, err
	}
	for _, name := range names {
		if name == "CURRENT" || name == s.base {
			continue
		}
		if !strings.HasPrefix(name, "base-") && !strings.HasPrefix(name, "tmp-") && name != "CURRENT.tmp" {
			// Not ours (an earlier version's snapshots, say): never
			// remove what this store did not write.
			return nil, fmt.Errorf("snapshot store %s holds %s, which this version did not write (an earlier "+
				"version's snapshots?): move the whole data directory away and start this node with an empty "+
				"one, to receive the cluster's copy", dir, name)
		}
		if err := os.RemoveAll(filepath.Join(dir, name)); err != nil {
			logger.Warn("cannot remove a snapshot file left by an earlier run", "file", name, "err", err)
		}
	}
	if s.base == "" {
		return s, nil
	}
	if err := readJSON(filepath.Join(dir, s.base, "meta.json"), &s.meta); err != nil {
		return nil, fmt.Errorf("snapshot store: %w", err)
	}
	if names, err = s.list(filepath.Join(dir, s.base)); err != nil {
		return nil, err
	}
	for _, name := range names {
		path := filepath.Join(dir, s.base, name)
		switch {
		case strings.HasSuffix(name, ".json") && strings.HasPrefix(name, "delta-"):
			var m Meta
			if err := readJSON(path, &m); err != nil {
				return nil, fmt.Errorf("snapshot store: %w", err)
			}
			s.deltas = append(s.deltas, m)
		case strings.HasSuffix(name, ".pages"):
			if _, err := os.Stat(strings.TrimSuffix(path, ".pages") + ".json"); err != nil {
				os.Remove(path) // never completed
			}
		case strings.HasSuffix(name, ".tmp"):
			os.Remove(path)
		}
	}
	slices.SortFunc(s.deltas, func(a, b Meta) int { return int(a.Seq) - int(b.Seq) })
	if err := s.foldAll(); err != nil {
		return nil, fmt.Errorf("snapshot store: %w", err)
	}
	s.noteLatest()
	return s, nil
}

// list returns the names in dir, and keeps the store's sequence above
// every number they carry.
func (s *Store) list(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	names := make([]string, 0, len(entries))
	for _, e := range entries {
		if n, ok := seqOf(e.Name()); ok {
			s.seq = max(s.seq, n)
		}
		names = append(names, e.Name())
	}
	return names, nil
}

// seqOf reads the sequence number in a name like base-7, tmp-7.pages or
// delta-7.json.
func seqOf(name string) (uint64, bool) {
	_, rest, ok := strings.Cut(name, "-")
	if !ok {
		return 0, false
	}
	rest, _, _ = strings.Cut(rest, ".")
	n, err := strconv.ParseUint(rest, 10, 64)
	return n, err == nil
}

func readJSON(path string, v any) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	return json.Unmarshal(b, v)
}

// writeJSON writes v to path atomically and durably.
func writeJSON(path string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	if err := writeFileSync(path+".tmp", b); err != nil {
		return err
	}
	if err := os.Rename(path+".tmp", path); err != nil {
		return err
	}
	return syncDir(filepath.Dir(path))
}

// LatestIndex returns the Raft index of the latest snapshot, or 0, at
// once (never waiting for a fold).
func (s *Store) LatestIndex() uint64 { return s.latestIndex.Load() }

// Streaming reports whether a whole snapshot is being served.
func (s *Store) Streaming() bool { return s.streams.Load() > 0 }

// noteLatest updates LatestIndex. s.mu is held.
func (s *Store) noteLatest() {
	m, _ := s.latest()
	s.latestIndex.Store(m.Raft.Index)
}

// Latest returns the latest snapshot's Meta.
func (s *Store) Latest() (Meta, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.latest()
}

func (s *Store) latest() (Meta, bool) {
	if n := len(s.deltas); n > 0 {
		return s.deltas[n-1], true
	}
	return s.meta, s.base != "" && s.meta.Raft.ID != ""
}

// List implements raft.SnapshotStore: the latest snapshot, if any.
func (s *Store) List() ([]*raft.SnapshotMeta, error) {
	m, ok := s.Latest()
	if !ok {
		return nil, nil
	}
	rm := m.Raft
	rm.Size = int64(fullSize(m.DBs))
	return []*raft.SnapshotMeta{&rm}, nil
}

// Create implements raft.SnapshotStore. The sink takes a delta (from
// FSM.Persist) or a full snapshot (from a leader).
func (s *Store) Create(version raft.SnapshotVersion, index, term uint64, configuration raft.Configuration,
	configurationIndex uint64, _ raft.Transport) (raft.SnapshotSink, error) {
	s.mu.Lock()
	s.seq++
	seq, gen := s.seq, s.gen
	s.mu.Unlock()
	k := &sink{s: s, seq: seq, gen: gen, done: make(chan error, 1)}
	k.meta = Meta{Seq: seq, Raft: raft.SnapshotMeta{
		Version: version, ID: fmt.Sprintf("%d-%d-%d", term, index, seq), Index: index, Term: term,
		Configuration: configuration, ConfigurationIndex: configurationIndex,
	}}
	pr, pw := io.Pipe()
	k.pw = pw
	go func() {
		err := k.receive(pr)
		pr.CloseWithError(errors.Join(err, errCanceled))
		k.done <- err
	}()
	return k, nil
}

var (
	errCanceled = errors.New("snapshot canceled")
	errStale    = errors.New("stale snapshot")
)

// sink receives a snapshot stream into tmp-SEQ.pages (a delta) or the
// directory tmp-SEQ (a full snapshot).
type sink struct {
	s    *Store
	seq  uint64
	gen  uint64 // of the store when it was created
	meta Meta
	pw   *io.PipeWriter
	done chan error
	kind byte
	once sync.Once
}

func (k *sink) ID() string                  { return k.meta.Raft.ID }
func (k *sink) Write(p []byte) (int, error) { return k.pw.Write(p) }

func (k *sink) tmp() string { return filepath.Join(k.s.dir, fmt.Sprintf("tmp-%d", k.seq)) }

// receive reads and checks the stream, and writes it where it belongs.
func (k *sink) receive(r io.Reader) error {
	sr, err := newStreamReader(r)
	if err != nil {
		return err
	}
	k.kind = sr.kind
	if k.kind == kindDelta {
		return k.receiveDelta(sr)
	}
	return k.receiveFull(sr)
}

func (k *sink) receiveDelta(sr *streamReader) error {
	f, err := os.Create(k.tmp() + ".pages")
	if err != nil {
		return err
	}
	defer f.Close()
	w := bufio.NewWriterSize(f, 1<<20)
	if err := writeStreamStart(w, kindDelta); err != nil {
		return err
	}
	buf := make([]byte, 65536)
	err = sr.eachDB(func(h dbHeader) error {
		k.meta.DBs = append(k.meta.DBs, h.DBMeta)
		if _, err := w.Write(h.encode()); err != nil {
			return err
		}
		for i := uint32(0); i < h.count; i++ {
			p, err := sr.page(buf)
			if err != nil {
				return err
			}
			if err := writePage(w, p, buf[:h.PageSize]); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	if err := writeStreamEnd(w); err != nil {
		return err
	}
	if err := w.Flush(); err != nil {
		return err
	}
	return f.Sync()
}

func (k *sink) receiveFull(sr *streamReader) error {
	dir := k.tmp()
	if err := os.Mkdir(dir, 0o755); err != nil {
		return err
	}
	buf := make([]byte, 65536)
	return sr.eachDB(func(h dbHeader) error {
		k.meta.DBs = append(k.meta.DBs, h.DBMeta)
		if err := copyPages(filepath.Join(dir, "db-"+h.Name), sr, h, buf); err != nil {
			return err
		}
		crashpoint.Hit("install-receive")
		return nil
	})
}

// copyPages writes the pages of a full stream's database to a new file.
func copyPages(path string, sr *streamReader, h dbHeader, buf []byte) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	w := bufio.NewWriterSize(&syncingWriter{f: f}, 1<<20)
	for i := uint32(0); i < h.count; i++ {
		if _, err := sr.page(buf); err != nil {
			return err
		}
		if _, err := w.Write(buf[:h.PageSize]); err != nil {
			return err
		}
	}
	if err := w.Flush(); err != nil {
		return err
	}
	return f.Sync()
}

// Close implements raft.SnapshotSink: the snapshot becomes the latest.
func (k *sink) Close() error {
	var err error
	k.once.Do(func() {
		k.pw.Close()
		if err = <-k.done; err == nil {
			err = k.s.add(k)
		}
		if err != nil {
			k.cleanup()
		}
	})
	return err
}

// Cancel implements raft.SnapshotSink.
func (k *sink) Cancel() error {
	k.once.Do(func() {
		k.pw.CloseWithError(errCanceled)
		<-k.done
		k.cleanup()
	})
	return nil
}

func (k *sink) cleanup() {
	os.RemoveAll(k.tmp())
	os.Remove(k.tmp() + ".pages")
}

// add makes a received snapshot the latest.
func (s *Store) add(k *sink) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if k.kind == kindFull {
		if err := writeJSON(filepath.Join(k.tmp(), "meta.json"), k.meta); err != nil {
			return err
		}
		if err := syncDir(k.tmp()); err != nil {
			return err
		}
		base := fmt.Sprintf("base-%d", k.seq)
		if err := os.Rename(k.tmp(), filepath.Join(s.dir, base)); err != nil {
			return err
		}
		crashpoint.Hit("install-base")
		if err := s.setCurrent(base); err != nil {
			return err
		}
		return nil
	}
	// Raft takes snapshots and installs them on different goroutines: a
	// delta of a state older than the latest snapshot (one installed while
	// it was written) must not go over it.
	// (Two snapshots at the same index, one asked for by the node and one
	// by Raft, are both fine: the second changes nothing.)
	if latest, ok := s.latest(); k.gen != s.gen || ok && k.meta.Raft.Index < latest.Raft.Index {
		return fmt.Errorf("%w: snapshot at index %d is older than the latest, at %d", errStale, k.meta.Raft.Index, latest.Raft.Index)
	}
	if s.base == "" {
		// The first snapshot: a delta over an empty base.
		base := fmt.Sprintf("base-%d", k.seq)
		if err := os.Mkdir(filepath.Join(s.dir, base), 0o755); err != nil {
			return err
		}
		if err := writeJSON(filepath.Join(s.dir, base, "meta.json"), Meta{}); err != nil {
			return err
		}
		if err := s.setCurrent(base); err != nil {
			return err
		}
	}
	name := fmt.Sprintf("delta-%d", k.seq)
	if err := os.Rename(k.tmp()+".pages", filepath.Join(s.dir, s.base, name+".pages")); err != nil {
		return err
	}
	crashpoint.Hit("snapshot-stored")
	if err := writeJSON(filepath.Join(s.dir, s.base, name+".json"), k.meta); err != nil {
		return err
	}
	s.deltas = append(s.deltas, k.meta)
	s.noteLatest()
	if s.readers == 0 {
		return s.foldAll()
	}
	return nil
}

// setCurrent makes base the current base directory and removes the
// previous one. s.mu is held.
func (s *Store) setCurrent(base string) error {
	if err := writeFileSync(filepath.Join(s.dir, "CURRENT.tmp"), []byte(base)); err != nil {
		return err
	}
	if err := os.Rename(filepath.Join(s.dir, "CURRENT.tmp"), filepath.Join(s.dir, "CURRENT")); err != nil {
		return err
	}
	if err := syncDir(s.dir); err != nil {
		return err
	}
	old := s.base
	s.base, s.deltas = base, nil
	s.gen++
	if err := readJSON(filepath.Join(s.dir, base, "meta.json"), &s.meta); err != nil {
		return err
	}
	s.noteLatest()
	if old != "" {
		// A stream still open on it keeps its files (on Windows, removal
		// fails and the next start removes them).
		if err := os.RemoveAll(filepath.Join(s.dir, old)); err != nil {
			s.logger.Warn("cannot remove an old snapshot yet", "dir", old, "err", err)
		}
	}
	return nil
}

// foldAll folds every pending delta into the base. s.mu is held and no
// stream is open.
func (s *Store) foldAll() error {
	for len(s.deltas) > 0 {
		if err := s.fold(s.deltas[0]); err != nil {
			return err
		}
		s.deltas = s.deltas[1:]
	}
	return nil
}

// fold writes a delta's pages into the base's files.
func (s *Store) fold(m Meta) error {
	dir := filepath.Join(s.dir, s.base)
	name := filepath.Join(dir, fmt.Sprintf("delta-%d", m.Seq))
	f, err := os.Open(name + ".pages")
	if err != nil {
		return err
	}
	defer f.Close()
	sr, err := newStreamReader(f)
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	buf := make([]byte, 65536)
	err = sr.eachDB(func(h dbHeader) error {
		if err := foldDB(filepath.Join(dir, "db-"+h.Name), sr, h, buf, s.has(h.Name)); err != nil {
			return err
		}
		crashpoint.Hit("snapshot-fold")
		return nil
	})
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	if err := syncDir(dir); err != nil {
		return err
	}
	if err := writeJSON(filepath.Join(dir, "meta.json"), m); err != nil {
		return err
	}
	s.meta = m
	crashpoint.Hit("snapshot-folded")
	if err := os.Remove(name + ".json"); err != nil {
		return err
	}
	return os.Remove(name + ".pages")
}

// has reports whether the base holds pages of database name.
func (s *Store) has(name string) bool {
	for _, d := range s.meta.DBs {
		if d.Name == name && d.Pages > 0 {
			return true
		}
	}
	return false
}

// foldDB writes a delta's pages of one database into its base file, which
// must exist if exists (else the base is damaged: never serve zeros).
func foldDB(path string, sr *streamReader, h dbHeader, buf []byte, exists bool) error {
	flags := os.O_RDWR
	if !exists {
		flags |= os.O_CREATE
	}
	db, err := os.OpenFile(path, flags, 0o644)
	if err != nil {
		return err
	}
	defer db.Close()
	ps := int64(h.PageSize)
	for i := uint32(0); i < h.count; i++ {
		p, err := sr.page(buf)
		if err != nil {
			return err
		}
		if _, err := db.WriteAt(buf[:ps], int64(p-1)*ps); err != nil {
			return err
		}
	}
	if err := db.Truncate(int64(h.Pages) * ps); err != nil {
		return err
	}
	return db.Sync()
}

// Open implements raft.SnapshotStore for the latest snapshot: a full
// stream of it, read from the base and the deltas not yet folded.
func (s *Store) Open(id string) (*raft.SnapshotMeta, io.ReadCloser, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	m, ok := s.latest()
	if !ok || m.Raft.ID != id {
		return nil, nil, fmt.Errorf("snapshot %s: not the latest", id)
	}
	if s.readers == 0 {
		if err := s.foldAll(); err != nil {
			return nil, nil, err
		}
	}
	r := &streamOut{s: s, meta: m, files: map[string]*os.File{}, base: filepath.Join(s.dir, s.base)}
	if err := r.open(r.base, s.deltas); err != nil {
		r.closeFiles()
		return nil, nil, err
	}
	s.readers++
	s.streams.Add(1)
	rm := m.Raft
	rm.Size = int64(fullSize(m.DBs))
	pr, pw := io.Pipe()
	r.pr = pr
	r.done = make(chan struct{})
	go func() {
		defer close(r.done)
		pw.CloseWithError(r.write(pw))
	}()
	return &rm, r, nil
}

// pageLoc is where a page of a delta not yet folded is.
type pageLoc struct {
	file *os.File
	off  int64
}

// streamOut serves a full stream of a snapshot.
type streamOut struct {
	s       *Store
	base    string // the base directory when the stream opened
	meta    Meta
	files   map[string]*os.File // base files and delta files, by path
	overlay map[string]map[uint32]pageLoc
	pr      *io.PipeReader
	done    chan struct{}
	once    sync.Once
}

// open opens the files the stream reads, so that a later change of base
// cannot change what it serves, and indexes the pages of the deltas.
func (r *streamOut) open(base string, deltas []Meta) error {
	for _, d := range r.meta.DBs {
		p := filepath.Join(base, "db-"+d.Name)
		f, err := os.Open(p)
		if errors.Is(err, os.ErrNotExist) {
			continue // every page is in a delta
		}
		if err != nil {
			return err
		}
		r.files[p] = f
	}
	for _, m := range deltas {
		p := filepath.Join(base, fmt.Sprintf("delta-%d.pages", m.Seq))
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		r.files[p] = f
		if err := r.index(f); err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
	}
	return nil
}

// index records where each page of a delta is; a later delta's page
// replaces an earlier one's.
func (r *streamOut) index(f *os.File) error {
	if r.overlay == nil {
		r.overlay = map[string]map[uint32]pageLoc{}
	}
	sr, err := newStreamReader(io.NewSectionReader(f, 0, 1<<62))
	if err != nil {
		return err
	}
	off := int64(len(streamMagic) + 1)
	buf := make([]byte, 65536)
	for {
		h, ok, err := sr.next()
		if err != nil {
			return err
		}
		if !ok {
			return nil
		}
		off += int64(len(h.encode()))
		m := r.overlay[h.Name]
		if m == nil {
			m = map[uint32]pageLoc{}
			r.overlay[h.Name] = m
		}
		for i := uint32(0); i < h.count; i++ {
			p, err := sr.page(buf)
			if err != nil {
				return err
			}
			m[p] = pageLoc{f, off + 4}
			off += 4 + int64(h.PageSize)
		}
	}
}

func (r *streamOut) write(pw io.Writer) error {
	w := bufio.NewWriterSize(pw, 1<<20)
	if err := writeStreamStart(w, kindFull); err != nil {
		return err
	}
	const chunk = 1 << 20 // read from the base this much at a time
	buf := make([]byte, chunk)
	pace := r.s.pacer()
	for _, d := range r.meta.DBs {
		if _, err := w.Write(dbHeader{DBMeta: d, count: d.Pages}.encode()); err != nil {
			return err
		}
		f := r.files[filepath.Join(r.base, "db-"+d.Name)]
		over := r.overlay[d.Name]
		ps := int64(d.PageSize)
		per := uint32(chunk / ps)
		for first := uint32(1); first <= d.Pages; first += per {
			n := min(per, d.Pages-first+1)
			data := buf[:int64(n)*ps]
			var got int // bytes of the base read: pages past it must come from a delta
			var err error
			if f != nil {
				got, err = f.ReadAt(data, int64(first-1)*ps)
				if errors.Is(err, io.EOF) {
					err = nil
				}
			}
			for i := uint32(0); i < n && err == nil; i++ {
				page := data[int64(i)*ps : int64(i+1)*ps]
				if loc, ok := over[first+i]; ok {
					_, err = loc.file.ReadAt(page, loc.off)
				} else if int64(got) < int64(i+1)*ps {
					if first+i == lockPage(ps) {
						// SQLite never writes the page of its lock bytes:
						// past the end of a base not yet folded to this
						// size, it is zeros, as in the database's file.
						clear(page)
					} else {
						err = io.ErrUnexpectedEOF
					}
				}
				if err == nil {
					err = writePage(w, first+i, page)
				}
			}
			if err != nil {
				return fmt.Errorf("snapshot %s: pages %d-%d of %s: %w", r.meta.Raft.ID, first, first+n-1, d.Name, err)
			}
			pace(int64(len(data)))
		}
	}
	if err := writeStreamEnd(w); err != nil {
		return err
	}
	return w.Flush()
}

func (r *streamOut) Read(p []byte) (int, error) { return r.pr.Read(p) }

// Close ends the stream; the deltas that arrived meanwhile are folded once
// no stream is open.
func (r *streamOut) Close() error {
	r.once.Do(func() {
		r.pr.CloseWithError(errCanceled)
		<-r.done
		r.closeFiles()
		r.s.mu.Lock()
		defer r.s.mu.Unlock()
		r.s.readers--
		r.s.streams.Add(-1)
		if r.s.readers == 0 {
			if err := r.s.foldAll(); err != nil {
				r.s.logger.Error("cannot fold a snapshot into the base", "err", err)
			}
		}
	})
	return nil
}

func (r *streamOut) closeFiles() {
	for _, f := range r.files {
		f.Close()
	}
}

// syncingWriter syncs its file after every 16 MiB written. Writing a large
// file (a snapshot received, a database created from one) would otherwise
// leave GiBs dirty in the page cache for one flush at the end, which holds
// up every other sync on the disk meanwhile: the Raft log's, so the
// cluster's commits.
type syncingWriter struct {
	f       *os.File
	written int64
}

const syncEvery = 16 << 20

func (w *syncingWriter) Write(p []byte) (int, error) {
	n, err := w.f.Write(p)
	w.written += int64(n)
	if err == nil && w.written >= syncEvery {
		w.written = 0
		err = w.f.Sync()
	}
	return n, err
}

// pacer returns a function that, told the bytes just served, sleeps as
// long as it takes to keep a stream at the store's rate. An install sends
// and writes the whole database: unpaced, it would take the disk and the
// cores from the cluster's commits.
func (s *Store) pacer() func(n int64) {
	if s.rate <= 0 {
		return func(int64) {}
	}
	start, sent := time.Now(), int64(0)
	return func(n int64) {
		sent += n
		if ahead := time.Duration(float64(sent)/float64(s.rate)*float64(time.Second)) - time.Since(start); ahead > 0 {
			time.Sleep(ahead)
		}
	}
}

// lockPage is the page that holds SQLite's lock bytes, at 1 GiB.
func lockPage(pageSize int64) uint32 { return uint32((1<<30)/pageSize) + 1 }
