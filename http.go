package dqlite

import (
	"context"
	"crypto/tls"
	"database/sql"
	sqldriver "database/sql/driver"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/godqlite/dqlite/driver"
)

// The HTTP/JSON API (Config.HTTPAddress), shaped like rqlite's:
//
//	POST /db/execute?db=NAME[&transaction]   body: statements
//	POST /db/query?db=NAME[&level=L][&after=I][&associative]   body: statements (read only, one snapshot)
//	GET  /db/query?db=NAME&q=SELECT…[&level=L]
//	GET  /status   GET /readyz   GET /metrics
//
// A statement is a JSON string, or an array of the SQL and its arguments
// (["INSERT INTO t VALUES(?, ?)", 1, "x"]), or of the SQL and an object of
// named arguments (["… :a", {"a": 1}]).

// DefaultHTTPDatabase is the database of requests that name none.
const DefaultHTTPDatabase = "main"

type httpAPI struct {
	n   *Node
	srv *http.Server
	ln  net.Listener

	mu  sync.Mutex
	dbs map[string]*cachedDB
}

// cachedDB is a database's *sql.DB, kept for the requests that follow:
// at most maxCachedDBs, the least recently used closed first.
type cachedDB struct {
	db   *sql.DB
	used time.Time
}

const maxCachedDBs = 64

// listenHTTP listens on Config.HTTPAddress (a host left out means
// 127.0.0.1); serveHTTP serves the API there until Close.
func (n *Node) listenHTTP() error {
	ln := n.cfg.HTTPListener
	if addr := n.cfg.HTTPAddress; ln == nil && addr != "" {
		if host, port, err := net.SplitHostPort(addr); err == nil && host == "" {
			addr = net.JoinHostPort("127.0.0.1", port)
		}
		var err error
		if ln, err = net.Listen("tcp", addr); err != nil {
			return fmt.Errorf("http: listen on %s: %w", addr, err)
		}
	}
	if ln == nil {
		return nil
	}
	if n.cfg.TLS != nil {
		ln = tls.NewListener(ln, serverTLS(n.cfg.TLS))
	}
	a := &httpAPI{n: n, ln: ln, dbs: map[string]*cachedDB{}}
	mux := http.NewServeMux()
	mux.HandleFunc("/db/execute", a.execute)
	mux.HandleFunc("/db/query", a.query)
	mux.HandleFunc("/status", a.status)
	mux.HandleFunc("/readyz", a.readyz)
	var g prometheus.Gatherer
	if rg, ok := n.cfg.Metrics.(prometheus.Gatherer); ok {
		g = rg
	} else {
		r := prometheus.NewRegistry()
		r.MustRegister(n.metrics)
		g = r
	}
	mux.Handle("/metrics", promhttp.HandlerFor(g, promhttp.HandlerOpts{}))
	a.srv = &http.Server{Handler: a.guard(mux), ReadHeaderTimeout: 10 * time.Second,
		BaseContext: func(net.Listener) context.Context { return n.serveCtx },
		// Refused TLS clients and the like go to the node's log.
		ErrorLog: slog.NewLogLogger(n.cfg.Logger.With("component", "http").Handler(), slog.LevelWarn)}
	n.http = a
	return nil
}

func (n *Node) serveHTTP() {
	a := n.http
	if a == nil {
		return
	}
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		if err := a.srv.Serve(a.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			n.cfg.Logger.Warn("http api stopped", "err", err)
		}
	}()
}

// guard refuses what a web page could send from a browser: a POST that is
// not JSON (a form or text/plain needs no CORS preflight, so another site
// could make the operator's browser send it), and, on a loopback listener
// without TLS, a Host that is no loopback name (DNS rebinding: a site
// whose name resolves to 127.0.0.1 would read the answers).
func (a *httpAPI) guard(h http.Handler) http.Handler {
	loopback := false
	if ta, ok := a.ln.Addr().(*net.TCPAddr); ok && a.n.cfg.TLS == nil {
		loopback = ta.IP.IsLoopback()
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if loopback {
			host, _, err := net.SplitHostPort(r.Host)
			if err != nil {
				host = r.Host
			}
			if ip := net.ParseIP(strings.Trim(host, "[]")); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
				a.fail(w, httpError{http.StatusForbidden, fmt.Errorf("Host %q: this API listens on loopback and answers only requests for 127.0.0.1 or localhost", r.Host)})
				return
			}
		}
		if r.Method == http.MethodPost && !strings.HasPrefix(r.Header.Get("Content-Type"), "application/json") {
			a.fail(w, httpError{http.StatusUnsupportedMediaType, errors.New("a POST's body must be JSON, sent with Content-Type: application/json")})
			return
		}
		h.ServeHTTP(w, r)
	})
}

// HTTPAddress returns the address the HTTP API listens on, or "" when it
// is off.
func (n *Node) HTTPAddress() string {
	if n.http == nil {
		return ""
	}
	return n.http.ln.Addr().String()
}

func (a *httpAPI) close() {
	a.srv.Close()
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, c := range a.dbs {
		c.db.Close()
	}
}

// db returns the *sql.DB of the request's database. A query does not
// create it.
func (a *httpAPI) db(ctx context.Context, name string, create bool) (*sql.DB, error) {
	if name == "" {
		name = DefaultHTTPDatabase
	}
	a.mu.Lock()
	if c := a.dbs[name]; c != nil {
		c.used = time.Now()
		a.mu.Unlock()
		return c.db, nil
	}
	a.mu.Unlock()
	if err := a.n.fsm.CheckName(name); err != nil {
		return nil, err
	}
	if !create && a.n.fsm.Database(name) == nil {
		return nil, fmt.Errorf("%w: %s", ErrNoDatabase, name)
	}
	db, err := a.n.Open(ctx, name)
	if err != nil {
		return nil, err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if old := a.dbs[name]; old != nil {
		db.Close()
		return old.db, nil
	}
	if len(a.dbs) >= maxCachedDBs {
		// Requests that hold a connection of it finish first (DB.Close
		// waits for them).
		var oldest string
		for k, c := range a.dbs {
			if oldest == "" || c.used.Before(a.dbs[oldest].used) {
				oldest = k
			}
		}
		go a.dbs[oldest].db.Close()
		delete(a.dbs, oldest)
	}
	a.dbs[name] = &cachedDB{db: db, used: time.Now()}
	return db, nil
}

// refused says why a statement may not run through the API: transactions
// are the request's (&transaction), and the node's files are not the
// client's.
func refused(s stmtReq) string {
	switch kw := driver.FirstKeyword(s.SQL); kw {
	case "BEGIN", "COMMIT", "END", "ROLLBACK", "SAVEPOINT", "RELEASE":
		return kw + " is not allowed: a request runs each statement on its own, or all in one transaction with &transaction"
	case "ATTACH", "DETACH", "VACUUM":
		return kw + " is not allowed through the HTTP API: it would use files on the node's machine"
	}
	return ""
}

// session runs a request's statements on a connection of its own, and
// closes it for good afterwards unless they were all plain reads and
// writes that leave no state behind (a PRAGMA, a TEMP table or trigger,
// EXPLAIN of a PRAGMA would), or it is left in a transaction: no request
// sees another's state.
func session(ctx context.Context, db *sql.DB, stmts []stmtReq, run func(*sql.Conn) error) error {
	conn, err := db.Conn(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	err = run(conn)
	dirty := slices.ContainsFunc(stmts, func(s stmtReq) bool {
		switch driver.FirstKeyword(s.SQL) {
		case "SELECT", "INSERT", "UPDATE", "DELETE", "REPLACE", "VALUES", "WITH":
			return false
		}
		return true
	})
	conn.Raw(func(dc any) error {
		if t, ok := dc.(interface{ InTransaction() bool }); dirty || !ok || t.InTransaction() {
			return sqldriver.ErrBadConn // database/sql closes it
		}
		return nil
	})
	return err
}

type stmtReq struct {
	SQL  string
	Args []any
}

// readStatements decodes the request's statements: the body of a POST,
// or q of a GET.
func (a *httpAPI) readStatements(w http.ResponseWriter, r *http.Request) ([]stmtReq, error) {
	if r.Method == http.MethodGet {
		if q := r.URL.Query()["q"]; len(q) > 0 {
			out := make([]stmtReq, len(q))
			for i, s := range q {
				out[i].SQL = s
			}
			return out, nil
		}
		return nil, httpError{http.StatusBadRequest, errors.New("a GET needs the statement in q")}
	}
	if r.Method != http.MethodPost {
		return nil, httpError{http.StatusMethodNotAllowed, fmt.Errorf("method %s not allowed", r.Method)}
	}
	body := http.MaxBytesReader(w, r.Body, a.n.cfg.MaxTxSize)
	dec := json.NewDecoder(body)
	dec.UseNumber()
	var raw []json.RawMessage
	if err := dec.Decode(&raw); err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return nil, httpError{http.StatusRequestEntityTooLarge,
				fmt.Errorf("request body larger than %d bytes (Config.MaxTxSize)", tooBig.Limit)}
		}
		return nil, httpError{http.StatusBadRequest, fmt.Errorf("body is not a JSON array of statements: %v", err)}
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, httpError{http.StatusBadRequest, errors.New("body holds more than one JSON value")}
	}
	if len(raw) == 0 {
		return nil, httpError{http.StatusBadRequest, errors.New("no statements")}
	}
	out := make([]stmtReq, len(raw))
	for i, m := range raw {
		s, err := parseStatement(m)
		if err != nil {
			return nil, httpError{http.StatusBadRequest, fmt.Errorf("statement %d: %v", i, err)}
		}
		out[i] = s
	}
	return out, nil
}

func parseStatement(m json.RawMessage) (stmtReq, error) {
	var s stmtReq
	if err := json.Unmarshal(m, &s.SQL); err == nil {
		return s, nil
	}
	dec := json.NewDecoder(strings.NewReader(string(m)))
	dec.UseNumber()
	var parts []any
	if err := dec.Decode(&parts); err != nil || len(parts) == 0 {
		return s, errors.New(`a statement is a string or an array ["SQL", arguments…]`)
	}
	sqlText, ok := parts[0].(string)
	if !ok {
		return s, errors.New("the first element of a statement array must be its SQL")
	}
	s.SQL = sqlText
	if len(parts) == 2 {
		if named, ok := parts[1].(map[string]any); ok {
			for k, v := range named {
				arg, err := jsonArg(v)
				if err != nil {
					return s, fmt.Errorf("argument %s: %v", k, err)
				}
				s.Args = append(s.Args, sql.Named(k, arg))
			}
			return s, nil
		}
	}
	for i, v := range parts[1:] {
		arg, err := jsonArg(v)
		if err != nil {
			return s, fmt.Errorf("argument %d: %v", i+1, err)
		}
		s.Args = append(s.Args, arg)
	}
	return s, nil
}

// jsonArg converts a JSON value to a statement argument: numbers that are
// integers to int64, others to float64.
func jsonArg(v any) (any, error) {
	switch x := v.(type) {
	case nil, string:
		return x, nil
	case bool:
		if x {
			return int64(1), nil
		}
		return int64(0), nil
	case json.Number:
		if i, err := x.Int64(); err == nil {
			return i, nil
		}
		f, err := x.Float64()
		if err != nil {
			return nil, fmt.Errorf("number %s out of range", x)
		}
		return f, nil
	}
	return nil, fmt.Errorf("%T is no SQL value (use a string, a number, true, false or null)", v)
}

type httpError struct {
	code int
	err  error
}

func (e httpError) Error() string { return e.err.Error() }

// result is one statement's outcome.
type result struct {
	LastInsertID *int64           `json:"last_insert_id,omitempty"`
	RowsAffected *int64           `json:"rows_affected,omitempty"`
	Columns      []string         `json:"columns,omitempty"`
	Types        []string         `json:"types,omitempty"`
	Values       [][]any          `json:"values,omitempty"`
	Rows         []map[string]any `json:"rows,omitempty"`
	Error        string           `json:"error,omitempty"`
}

type response struct {
	Results []result `json:"results"`
	// Index is the Raft index of the last write committed by the request:
	// pass it as after= to a query on another node to read it there.
	Index uint64  `json:"index,omitempty"`
	Time  float64 `json:"time"`
	Error string  `json:"error,omitempty"`
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		code = http.StatusInternalServerError
		b, _ = json.Marshal(response{Error: "cannot encode the answer: " + err.Error()})
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	w.Write(append(b, '\n'))
}

// fail answers a request that could not run at all.
func (a *httpAPI) fail(w http.ResponseWriter, err error) {
	code := http.StatusInternalServerError
	var he httpError
	var nl *NotLeaderError
	switch {
	case errors.As(err, &he):
		code = he.code
	case errors.Is(err, ErrNoDatabase):
		code = http.StatusNotFound
	case errors.Is(err, ErrInvalidName):
		code = http.StatusBadRequest
	case errors.Is(err, ErrClosed), errors.Is(err, ErrNoLeader), errors.As(err, &nl), errors.Is(err, ErrNoQuorum):
		code = http.StatusServiceUnavailable
	}
	writeJSON(w, code, response{Error: err.Error()})
}

func (a *httpAPI) execute(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	if r.Method != http.MethodPost {
		a.fail(w, httpError{http.StatusMethodNotAllowed, errors.New("/db/execute takes a POST")})
		return
	}
	stmts, err := a.readStatements(w, r)
	if err != nil {
		a.fail(w, err)
		return
	}
	q := r.URL.Query()
	db, err := a.db(r.Context(), q.Get("db"), true)
	if err != nil {
		a.fail(w, err)
		return
	}
	var index uint64
	ctx := driver.WithCommitIndex(r.Context(), &index)
	resp := response{Results: make([]result, 0, len(stmts))}
	err = session(ctx, db, stmts, func(conn *sql.Conn) error {
		if !q.Has("transaction") {
			for _, s := range stmts {
				resp.Results = append(resp.Results, execOne(ctx, conn, s))
			}
			return nil
		}
		tx, err := conn.BeginTx(ctx, nil)
		if err != nil {
			return err
		}
		for _, s := range stmts {
			res := execOne(ctx, tx, s)
			resp.Results = append(resp.Results, res)
			if res.Error != "" {
				break
			}
		}
		if last := resp.Results[len(resp.Results)-1]; last.Error != "" {
			tx.Rollback()
			index = 0
		} else if err := tx.Commit(); err != nil {
			msg := "the transaction did not commit: " + err.Error()
			if errors.Is(err, ErrLeadershipLost) || errors.Is(err, ErrNoQuorum) {
				msg = "the transaction's outcome is unknown (it may have committed): " + err.Error()
			}
			for i := range resp.Results {
				resp.Results[i] = result{Error: msg}
			}
			index = 0
		}
		return nil
	})
	if err != nil {
		a.fail(w, err)
		return
	}
	resp.Index = index
	resp.Time = time.Since(start).Seconds()
	writeJSON(w, http.StatusOK, resp)
}

type preparer interface {
	PrepareContext(ctx context.Context, query string) (*sql.Stmt, error)
}

// prepare prepares a statement the API runs, which refuses a text holding
// more than one; or says why it cannot run.
func prepare(ctx context.Context, e preparer, s stmtReq) (*sql.Stmt, string) {
	if why := refused(s); why != "" {
		return nil, why
	}
	st, err := e.PrepareContext(ctx, s.SQL)
	if err != nil {
		return nil, err.Error()
	}
	return st, ""
}

// execOne runs one statement.
func execOne(ctx context.Context, e preparer, s stmtReq) result {
	st, why := prepare(ctx, e, s)
	if st == nil {
		return result{Error: why}
	}
	defer st.Close()
	res, err := st.ExecContext(ctx, s.Args...)
	if err != nil {
		return result{Error: err.Error()}
	}
	var out result
	if id, err := res.LastInsertId(); err == nil {
		out.LastInsertID = &id
	}
	if n, err := res.RowsAffected(); err == nil {
		out.RowsAffected = &n
	}
	return out
}

// readLevel parses level=: ours (local, linearizable) or rqlite's (none,
// weak, strong: the last two are linearizable here).
func readLevel(s string) (ReadLevel, error) {
	switch strings.ToLower(s) {
	case "", "local", "none":
		return ReadLocal, nil
	case "linearizable", "weak", "strong":
		return ReadLinearizable, nil
	}
	return 0, fmt.Errorf("unknown read level %q (local or linearizable)", s)
}

func (a *httpAPI) query(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	stmts, err := a.readStatements(w, r)
	if err != nil {
		a.fail(w, err)
		return
	}
	q := r.URL.Query()
	level, err := readLevel(q.Get("level"))
	if err != nil {
		a.fail(w, httpError{http.StatusBadRequest, err})
		return
	}
	ctx := WithReadLevel(r.Context(), level)
	if s := q.Get("after"); s != "" {
		i, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			a.fail(w, httpError{http.StatusBadRequest, fmt.Errorf("after=%q is no Raft index", s)})
			return
		}
		ctx = driver.WithAfter(ctx, i)
	}
	db, err := a.db(r.Context(), q.Get("db"), false)
	if err != nil {
		a.fail(w, err)
		return
	}
	// One read-only transaction: the statements read one snapshot, and
	// one that would write fails.
	resp := response{Results: make([]result, 0, len(stmts))}
	err = session(ctx, db, stmts, func(conn *sql.Conn) error {
		tx, err := conn.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
		if err != nil {
			return err
		}
		defer tx.Rollback()
		for _, s := range stmts {
			resp.Results = append(resp.Results, queryOne(ctx, tx, s, q.Has("associative")))
		}
		return nil
	})
	if err != nil {
		a.fail(w, err)
		return
	}
	resp.Time = time.Since(start).Seconds()
	writeJSON(w, http.StatusOK, resp)
}

func queryOne(ctx context.Context, e preparer, s stmtReq, assoc bool) result {
	st, why := prepare(ctx, e, s)
	if st == nil {
		return result{Error: why}
	}
	defer st.Close()
	rows, err := st.QueryContext(ctx, s.Args...)
	if err != nil {
		return result{Error: err.Error()}
	}
	defer rows.Close()
	var out result
	if out.Columns, err = rows.Columns(); err != nil {
		return result{Error: err.Error()}
	}
	if types, err := rows.ColumnTypes(); err == nil {
		for _, t := range types {
			out.Types = append(out.Types, strings.ToLower(t.DatabaseTypeName()))
		}
	}
	for rows.Next() {
		vals := make([]any, len(out.Columns))
		ptrs := make([]any, len(vals))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		if err := rows.Scan(ptrs...); err != nil {
			return result{Error: err.Error()}
		}
		for i, v := range vals {
			// JSON has no infinities or NaN: SQLite's are given as text.
			if f, ok := v.(float64); ok && (math.IsInf(f, 0) || math.IsNaN(f)) {
				vals[i] = strconv.FormatFloat(f, 'g', -1, 64)
			}
		}
		if assoc {
			m := make(map[string]any, len(vals))
			for i, c := range out.Columns {
				m[c] = vals[i]
			}
			out.Rows = append(out.Rows, m)
		} else {
			out.Values = append(out.Values, vals)
		}
	}
	if err := rows.Err(); err != nil {
		return result{Error: err.Error()}
	}
	if !assoc && out.Values == nil {
		out.Values = [][]any{}
	}
	return out
}

func (a *httpAPI) status(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, a.n.Status())
}

// readyz answers 200 when the node is open, in the configuration and
// knows a leader: it can serve reads and forward writes.
func (a *httpAPI) readyz(w http.ResponseWriter, r *http.Request) {
	st := a.n.status(false)
	switch {
	case st.State == "Shutdown":
		http.Error(w, "node closed", http.StatusServiceUnavailable)
	case st.LeaderID == 0:
		http.Error(w, "no leader known", http.StatusServiceUnavailable)
	case st.Role != Voter && st.Role != Standby:
		http.Error(w, "holds no data: not a voter or standby", http.StatusServiceUnavailable)
	default:
		fmt.Fprintf(w, "ready: %s, leader %d\n", strings.ToLower(st.State), st.LeaderID)
	}
}
