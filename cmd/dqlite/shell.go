package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/ncruces/go-sqlite3"
	"golang.org/x/term"

	dqdriver "github.com/godqlite/dqlite/driver"
	"github.com/godqlite/dqlite/internal/dump"
)

// shell runs statements and dot commands against a cluster.
type shell struct {
	ctx    context.Context
	addrs  []string
	name   string  // the database; "" when none was given
	db     *sql.DB // of the database, through the remote client
	conn   *sql.Conn
	dial   func(context.Context, string) (net.Conn, error) // nil: TCP
	tls    *tls.Config
	out    io.Writer
	errOut io.Writer
	timer  bool
	failed bool // a statement or command failed
	quit   bool
}

const help = `SQL statements end with a semicolon; they run on the leader. Dot commands:
  .cluster                the members: role, leader, applied index and lag
  .leader                 the leader's ID and address
  .add ID ADDRESS [ROLE]  add node ID, listening at ADDRESS, as a voter, standby or spare
  .role ID ROLE           make member ID a voter, standby or spare
  .remove ID              remove node ID from the cluster
  .transfer [ID]          hand leadership to node ID (default: the best voter)
  .dump [FILE]            the database as SQL text (to FILE, or printed)
  .backup FILE            copy the database into a new SQLite file FILE
  .restore FILE           replace the database's content with SQLite file FILE's
  .timer on|off           print each statement's time
  .help                   this text
  .quit                   leave (also Ctrl-D)
`

func (sh *shell) status() int {
	if sh.failed {
		return 1
	}
	return 0
}

func (sh *shell) fail(err error) {
	sh.failed = true
	fmt.Fprintf(sh.errOut, "Error: %v\n", err)
}

// interactive reads lines from a terminal, with line editing and a
// history kept in ~/.dqlite_history.
func (sh *shell) interactive(in io.Reader) int {
	if f, ok := in.(*os.File); ok {
		old, err := term.MakeRaw(int(f.Fd()))
		if err != nil {
			sh.fail(err)
			return 1
		}
		defer term.Restore(int(f.Fd()), old)
	}
	out := sh.out
	t := term.NewTerminal(struct {
		io.Reader
		io.Writer
	}{in, out}, "dqlite> ")
	t.History = loadHistory()
	sh.out, sh.errOut = t, t // the terminal turns \n into \r\n in raw mode
	fmt.Fprintf(t, "dqlite shell: %s, database %s. Enter .help for help.\n", strings.Join(sh.addrs, ","), orNone(sh.name))
	if _, leader, err := dqdriver.RemoteLeader(sh.ctx, sh.dial, sh.addrs); err != nil {
		fmt.Fprintf(t, "Warning: %v\n", err)
	} else {
		fmt.Fprintf(t, "leader: %s\n", leader)
	}
	var sp splitter
	for !sh.quit {
		if sp.pending() {
			t.SetPrompt("   ...> ")
		} else {
			t.SetPrompt("dqlite> ")
		}
		line, err := t.ReadLine()
		if err != nil {
			if err == term.ErrPasteIndicator {
				continue
			}
			fmt.Fprintln(t)
			break
		}
		sh.line(&sp, line)
	}
	return 0
}

// script runs what r holds, line by line, as sqlite3 does with a file.
func (sh *shell) script(r io.Reader) int {
	br := bufio.NewReaderSize(r, 1<<20)
	var sp splitter
	for !sh.quit {
		line, err := br.ReadString('\n')
		if line != "" {
			sh.line(&sp, strings.TrimRight(line, "\r\n"))
		}
		if err != nil {
			if err != io.EOF {
				sh.fail(err)
			}
			break
		}
	}
	for _, stmt := range sp.rest() {
		if sh.quit {
			break
		}
		sh.do(stmt)
	}
	return sh.status()
}

// line takes one line of input: a dot command (outside a statement) or a
// part of SQL, run once a statement is whole.
func (sh *shell) line(sp *splitter, line string) {
	for _, stmt := range sp.line(line) {
		if !sh.do(stmt) {
			return
		}
	}
}

// do runs a statement or a dot command; it returns false after .quit.
func (sh *shell) do(stmt string) bool {
	if strings.HasPrefix(stmt, ".") {
		sh.dot(stmt)
		return !sh.quit
	}
	if sh.db == nil {
		sh.fail(errors.New("no database: give one after the addresses (dqlite ADDRESS DATABASE)"))
		return true
	}
	start := time.Now()
	n, err := sh.sql(stmt)
	if err != nil {
		sh.fail(err)
		return true
	}
	if sh.timer {
		what := "ok"
		if n >= 0 {
			what = plural(n, "row")
		}
		fmt.Fprintf(sh.out, "(%s, %s)\n", what, fmtDuration(time.Since(start)))
	}
	return true
}

// connection returns the shell's session: one connection, so that BEGIN
// and COMMIT typed on their own lines belong to one transaction.
func (sh *shell) connection() (*sql.Conn, error) {
	if sh.conn == nil {
		c, err := sh.db.Conn(sh.ctx)
		if err != nil {
			return nil, err
		}
		sh.conn = c
	}
	return sh.conn, nil
}

func (sh *shell) closeConn() {
	if sh.conn != nil {
		sh.conn.Close()
		sh.conn = nil
	}
}

// sql runs one statement and prints its rows; it returns how many, or -1
// for a statement that returns none.
func (sh *shell) sql(stmt string) (int, error) {
	c, err := sh.connection()
	if err != nil {
		return 0, err
	}
	n := -1
	if returnsRows(stmt) {
		rows, err := c.QueryContext(sh.ctx, stmt)
		if err == nil {
			n, err = printRows(sh.out, rows)
		}
		if err != nil {
			return 0, sh.connErr(err)
		}
		return n, nil
	}
	if _, err := c.ExecContext(sh.ctx, stmt); err != nil {
		return 0, sh.connErr(err)
	}
	return n, nil
}

// connErr drops a session that broke, so that the next statement opens a
// new one (an open transaction is gone with it: the leader rolled it back).
func (sh *shell) connErr(err error) error {
	if errors.Is(err, sql.ErrConnDone) || errors.Is(err, driver.ErrBadConn) {
		sh.closeConn()
		return fmt.Errorf("%w (the session ended; a transaction that was open is rolled back)", err)
	}
	return err
}

// returnsRows says whether to run stmt as a query.
func returnsRows(stmt string) bool {
	kw := strings.ToUpper(firstWord(stmt))
	switch kw {
	case "SELECT", "VALUES", "PRAGMA", "EXPLAIN", "WITH":
		return true
	}
	return strings.Contains(strings.ToUpper(stmt), "RETURNING")
}

func firstWord(s string) string {
	for {
		s = strings.TrimLeft(s, " \t\r\n(")
		switch {
		case strings.HasPrefix(s, "--"):
			i := strings.IndexByte(s, '\n')
			if i < 0 {
				return ""
			}
			s = s[i:]
		case strings.HasPrefix(s, "/*"):
			i := strings.Index(s, "*/")
			if i < 0 {
				return ""
			}
			s = s[i+2:]
		default:
			i := strings.IndexFunc(s, func(r rune) bool { return !isWordByte(byte(r)) || r > 0x7f })
			if i < 0 {
				return s
			}
			return s[:i]
		}
	}
}

// printRows prints rows as a table; the column widths come from the
// first rows (at most 1000), so that memory stays bounded.
func printRows(w io.Writer, rows *sql.Rows) (int, error) {
	defer rows.Close()
	cols, err := rows.Columns()
	if err != nil {
		return 0, err
	}
	vals := make([]any, len(cols))
	ptrs := make([]any, len(cols))
	for i := range vals {
		ptrs[i] = &vals[i]
	}
	widths := make([]int, len(cols))
	for i, c := range cols {
		widths[i] = utf8.RuneCountInString(c)
	}
	var head [][]string
	n := 0
	bw := bufio.NewWriter(w)
	defer bw.Flush()
	printRow := func(r []string) {
		for i, v := range r {
			if i > 0 {
				bw.WriteString("  ")
			}
			bw.WriteString(v)
			if i < len(r)-1 {
				bw.WriteString(strings.Repeat(" ", max(0, widths[i]-utf8.RuneCountInString(v))))
			}
		}
		bw.WriteByte('\n')
	}
	flushHead := func() {
		if head == nil {
			return
		}
		printRow(cols)
		sep := make([]string, len(cols))
		for i := range sep {
			sep[i] = strings.Repeat("-", widths[i])
		}
		printRow(sep)
		for _, r := range head {
			printRow(r)
		}
		head = nil
	}
	head = [][]string{}
	for rows.Next() {
		if err := rows.Scan(ptrs...); err != nil {
			return n, err
		}
		r := make([]string, len(cols))
		for i, v := range vals {
			r[i] = format(v)
		}
		n++
		if head != nil && len(head) < 1000 {
			for i, v := range r {
				widths[i] = max(widths[i], utf8.RuneCountInString(v))
			}
			head = append(head, r)
			continue
		}
		flushHead()
		printRow(r)
	}
	if err := rows.Err(); err != nil {
		return n, err
	}
	if len(cols) > 0 {
		flushHead()
	}
	return n, nil
}

func format(v any) string {
	switch v := v.(type) {
	case nil:
		return "NULL"
	case []byte:
		if utf8.Valid(v) {
			return string(v)
		}
		return fmt.Sprintf("X'%X'", v)
	case time.Time:
		return v.Format(time.RFC3339Nano)
	case float64:
		return strconv.FormatFloat(v, 'g', -1, 64)
	default:
		return fmt.Sprint(v)
	}
}

func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}

func fmtDuration(d time.Duration) string {
	return fmt.Sprintf("%.3f ms", float64(d.Microseconds())/1000)
}

func orNone(s string) string {
	if s == "" {
		return "(none)"
	}
	return s
}

// dot runs a dot command.
func (sh *shell) dot(line string) {
	f := strings.Fields(line)
	cmd, args := f[0], f[1:]
	want := func(min, max int, usage string) bool {
		if len(args) < min || len(args) > max {
			sh.fail(fmt.Errorf("usage: %s", usage))
			return false
		}
		return true
	}
	id := func(s string) (uint64, bool) {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil || v == 0 {
			sh.fail(fmt.Errorf("%q is not a node ID (a positive integer)", s))
			return 0, false
		}
		return v, true
	}
	ctx, cancel := context.WithTimeout(sh.ctx, 30*time.Second)
	defer cancel()
	switch cmd {
	case ".help":
		fmt.Fprint(sh.out, help)
	case ".quit", ".exit":
		sh.quit = true
	case ".timer":
		if want(1, 1, ".timer on|off") {
			switch args[0] {
			case "on":
				sh.timer = true
			case "off":
				sh.timer = false
			default:
				sh.fail(errors.New("usage: .timer on|off"))
			}
		}
	case ".leader":
		if want(0, 0, ".leader") {
			sh.leader(ctx)
		}
	case ".cluster":
		if want(0, 0, ".cluster") {
			sh.cluster(ctx)
		}
	case ".add":
		if want(2, 3, ".add ID ADDRESS [ROLE]") {
			if v, ok := id(args[0]); ok {
				sh.admin(ctx, "add", v, strings.Join(args[1:], " "))
			}
		}
	case ".role":
		if want(2, 2, ".role ID voter|standby|spare") {
			if v, ok := id(args[0]); ok {
				sh.admin(ctx, "assign", v, args[1])
			}
		}
	case ".remove":
		if want(1, 1, ".remove ID") {
			if v, ok := id(args[0]); ok {
				sh.admin(ctx, "remove", v, "")
			}
		}
	case ".transfer":
		if want(0, 1, ".transfer [ID]") {
			var v uint64
			ok := true
			if len(args) == 1 {
				v, ok = id(args[0])
			}
			if ok {
				sh.admin(ctx, "transfer", v, "")
			}
		}
	case ".dump":
		if want(0, 1, ".dump [FILE]") && sh.needDB() {
			sh.dump(args)
		}
	case ".backup":
		if want(1, 1, ".backup FILE") && sh.needDB() {
			sh.backup(args[0])
		}
	case ".restore":
		if want(1, 1, ".restore FILE") && sh.needDB() {
			sh.restore(args[0])
		}
	default:
		sh.fail(fmt.Errorf("unknown command %s: .help lists the commands", cmd))
	}
}

func (sh *shell) needDB() bool {
	if sh.db == nil {
		sh.fail(errors.New("no database: give one after the addresses (dqlite ADDRESS DATABASE)"))
		return false
	}
	return true
}

func (sh *shell) leader(ctx context.Context) {
	id, addr, err := dqdriver.RemoteLeader(ctx, sh.dial, sh.addrs)
	if err != nil {
		sh.fail(err)
		return
	}
	fmt.Fprintf(sh.out, "%d %s\n", id, addr)
}

// cluster prints every member, asking each for its own state.
func (sh *shell) cluster(ctx context.Context) {
	ms, err := dqdriver.RemoteCluster(ctx, sh.dial, sh.addrs)
	if err != nil {
		sh.fail(err)
		return
	}
	tw := [][]string{{"ID", "ADDRESS", "ROLE", "STATE", "APPLIED", "LAG"}}
	leader := false
	for _, m := range ms {
		role := m.Role
		state, applied, lag := "unreachable", "-", "-"
		if m.Err == nil {
			state = "follower"
			if m.Leader {
				state, leader = "leader", true
			}
			applied = strconv.FormatUint(m.Status.AppliedIndex, 10)
		}
		if m.LagKnown && role != "spare" {
			lag = strconv.FormatUint(m.Lag, 10)
		}
		tw = append(tw, []string{strconv.FormatUint(m.ID, 10), m.Address, role, state, applied, lag})
	}
	printTable(sh.out, tw)
	if !leader {
		fmt.Fprintln(sh.out, "no leader")
	}
}

func printTable(w io.Writer, rows [][]string) {
	widths := make([]int, len(rows[0]))
	for _, r := range rows {
		for i, v := range r {
			widths[i] = max(widths[i], len(v))
		}
	}
	for _, r := range rows {
		var b strings.Builder
		for i, v := range r {
			if i > 0 {
				b.WriteString("  ")
			}
			b.WriteString(v)
			if i < len(r)-1 {
				b.WriteString(strings.Repeat(" ", widths[i]-len(v)))
			}
		}
		fmt.Fprintln(w, b.String())
	}
}

func (sh *shell) admin(ctx context.Context, op string, id uint64, address string) {
	if err := dqdriver.RemoteAdmin(ctx, sh.dial, sh.addrs, op, id, address); err != nil {
		sh.fail(err)
		return
	}
	fmt.Fprintln(sh.out, "ok")
}

// readTx runs fn in a read-only transaction on the leader: one snapshot.
func (sh *shell) readTx(fn func(tx *sql.Tx) error) error {
	c, err := sh.connection()
	if err != nil {
		return err
	}
	tx, err := c.BeginTx(sh.ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return sh.connErr(err)
	}
	defer tx.Rollback()
	return sh.connErr(fn(tx))
}

func (sh *shell) dump(args []string) {
	w := sh.out
	var f *os.File
	if len(args) == 1 {
		var err error
		if f, err = os.Create(args[0]); err != nil {
			sh.fail(err)
			return
		}
		w = f
	}
	bw := bufio.NewWriterSize(w, 64<<10)
	err := sh.readTx(func(tx *sql.Tx) error { return dump.Write(sh.ctx, dump.SQL(tx), bw) })
	if err == nil {
		err = bw.Flush()
	}
	if f != nil {
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}
	if err != nil {
		sh.fail(err)
	}
}

// backup copies the database, as one snapshot on the leader, into a new
// SQLite file, written beside it first and renamed when whole.
func (sh *shell) backup(path string) {
	if _, err := os.Stat(path); err == nil {
		sh.fail(fmt.Errorf("%s exists: the backup goes to a new file", path))
		return
	}
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".tmp")
	os.Remove(tmp)
	defer os.Remove(tmp)
	c, err := sqlite3.Open(dump.FileURI(tmp))
	if err != nil {
		sh.fail(err)
		return
	}
	rows := 0
	err = c.Exec(`BEGIN`)
	if err == nil {
		err = sh.readTx(func(tx *sql.Tx) error {
			return dump.Statements(sh.ctx, dump.SQL(tx), func(s string) error {
				rows++
				return c.Exec(s)
			})
		})
	}
	if err == nil {
		err = c.Exec(`COMMIT`)
	}
	if cerr := c.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		sh.fail(fmt.Errorf("backup: %w", err))
		return
	}
	fmt.Fprintf(sh.out, "backed up %s into %s (%d statements)\n", sh.name, path, rows)
}

// restore replaces the database's content with a SQLite file's, in one
// transaction on the leader.
func (sh *shell) restore(path string) {
	src, err := dump.OpenFile(path)
	if err != nil {
		sh.fail(fmt.Errorf("restore: %s: %w", path, err))
		return
	}
	defer src.Close()
	c, err := sh.connection()
	if err != nil {
		sh.fail(err)
		return
	}
	tx, err := c.BeginTx(sh.ctx, nil)
	if err != nil {
		sh.fail(sh.connErr(err))
		return
	}
	defer tx.Rollback()
	if err := dump.Replace(sh.ctx, dump.Raw(src), tx); err != nil {
		sh.fail(fmt.Errorf("restore: %w", sh.connErr(err)))
		return
	}
	if err := tx.Commit(); err != nil {
		sh.fail(fmt.Errorf("restore: %w", sh.connErr(err)))
		return
	}
	fmt.Fprintf(sh.out, "restored %s from %s\n", sh.name, path)
}

// history is the prompt's history, kept in ~/.dqlite_history.
type history struct {
	lines []string // oldest first
	file  *os.File
}

const historyMax = 1000

func loadHistory() *history {
	h := &history{}
	home, err := os.UserHomeDir()
	if err != nil {
		return h
	}
	path := filepath.Join(home, ".dqlite_history")
	if b, err := os.ReadFile(path); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if l != "" {
				h.lines = append(h.lines, l)
			}
		}
		if len(h.lines) > historyMax {
			h.lines = h.lines[len(h.lines)-historyMax:]
		}
	}
	h.file, _ = os.OpenFile(path, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	return h
}

func (h *history) Add(entry string) {
	if strings.TrimSpace(entry) == "" || len(h.lines) > 0 && h.lines[len(h.lines)-1] == entry {
		return
	}
	h.lines = append(h.lines, entry)
	if len(h.lines) > historyMax {
		h.lines = h.lines[1:]
	}
	if h.file != nil {
		h.file.WriteString(strings.ReplaceAll(entry, "\n", " ") + "\n")
	}
}

func (h *history) Len() int { return len(h.lines) }

func (h *history) At(i int) string { return h.lines[len(h.lines)-1-i] }
