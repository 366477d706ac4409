package driver

import (
	"bufio"
	"context"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/godqlite/dqlite/internal/errs"
	"github.com/godqlite/dqlite/internal/wire"
)

// Serve runs one session of the client protocol on nc, whose first byte
// (wire.Magic) the caller has read, until the client goes away or ctx is
// done (the node closes). Statements run on a connection of this node,
// with every check a local connection makes; it never forwards them on.
func Serve(ctx context.Context, nc net.Conn, b Backend) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(ctx, func() { nc.Close() })
	defer stop()
	defer nc.Close()
	sv := &server{b: b, stmts: map[string]*stmt{}, cursors: map[uint64]*cursor{}}
	defer sv.close()
	br := bufio.NewReaderSize(nc, 64<<10)
	// The version and the hello come within helloTimeout, and the hello is
	// small: a client holds nothing of the node before it named its
	// database.
	nc.SetReadDeadline(time.Now().Add(helloTimeout))
	if v, err := br.ReadByte(); err != nil {
		return
	} else if v != wire.Version {
		sv.fail(fmt.Errorf("dqlite: client protocol version %d; this node speaks %d", v, wire.Version))
		sv.w.WriteTo(nc)
		return
	}
	t, r, _, err := wire.ReadFrame(br, nil, wire.MaxHello)
	if err != nil {
		return
	}
	nc.SetReadDeadline(time.Time{})
	ok := sv.handle(ctx, t, r)
	if _, err := sv.w.WriteTo(nc); err != nil || !ok {
		return
	}

	// One goroutine reads frames, so that an interrupt can reach the
	// request being run; requests are run one at a time, in order.
	type frame struct {
		t wire.Type
		r *wire.Reader
	}
	reqs := make(chan frame)
	var mu sync.Mutex
	var interrupt context.CancelFunc
	read := make(chan struct{})
	defer func() {
		// The reader ends with the connection: Serve returns after it.
		cancel()
		nc.Close()
		<-read
	}()
	go func() {
		defer close(read)
		defer close(reqs)
		var buf []byte
		for {
			t, r, _, err := wire.ReadFrame(br, buf, wire.MaxFrame)
			if err != nil {
				cancel()
				return
			}
			buf = nil // the request keeps it until it is run
			if t == wire.Interrupt {
				mu.Lock()
				if interrupt != nil {
					interrupt()
				}
				mu.Unlock()
				continue
			}
			select {
			case reqs <- frame{t, r}:
			case <-ctx.Done():
				return
			}
		}
	}()
	for f := range reqs {
		rctx, rcancel := context.WithCancel(ctx)
		mu.Lock()
		interrupt = rcancel
		mu.Unlock()
		ok := sv.handle(rctx, f.t, f.r)
		mu.Lock()
		interrupt = nil
		mu.Unlock()
		rcancel()
		if _, err := sv.w.WriteTo(nc); err != nil || !ok {
			return
		}
	}
}

type server struct {
	b       Backend
	c       *conn // nil until Hello
	w       wire.Writer
	stmts   map[string]*stmt // prepared statements, by their SQL
	cursors map[uint64]*cursor
	next    uint64
}

type cursor struct {
	s     *stmt
	owned bool // s is the cursor's own: closed with it
	rows  driver.Rows
}

// end closes the cursor's rows (which commits an autocommit write) and its
// own statement.
func (cur *cursor) end() error {
	err := cur.rows.Close()
	if cur.owned {
		cur.s.Close()
	}
	return err
}

// helloTimeout bounds the wait for a new connection's version and hello.
const helloTimeout = 5 * time.Second

// batch limits: a batch of rows ends after this many rows or bytes.
const (
	batchRows  = 1024
	batchBytes = 1 << 20
)

func (sv *server) close() {
	for id, cur := range sv.cursors {
		cur.end()
		delete(sv.cursors, id)
	}
	if sv.c != nil {
		sv.c.Close()
	}
}

// handle runs one request and leaves its answer in sv.w. It returns false
// when the session must end after the answer.
func (sv *server) handle(ctx context.Context, t wire.Type, r *wire.Reader) bool {
	if sv.c == nil {
		if t == wire.Admin {
			sv.admin(ctx, r)
			return false
		}
		if t != wire.Hello {
			sv.fail(fmt.Errorf("%w: the first request is not hello", wire.ErrMalformed))
			return false
		}
		return sv.hello(ctx, r)
	}
	var err error
	switch t {
	case wire.Exec, wire.Query, wire.Begin, wire.ReadIndex:
		// What starts outside a transaction runs only on the leader: a
		// node that lost leadership would begin a read transaction whose
		// first write fails, or serve its own, older, copy. The client
		// finds the leader again (nothing ran).
		sv.c.mu.Lock()
		inTx := sv.c.inTx
		sv.c.mu.Unlock()
		if !inTx {
			if err := sv.b.CheckLeader(); err != nil {
				sv.fail(err)
				return true
			}
		}
	}
	switch t {
	case wire.Exec:
		err = sv.exec(ctx, r)
	case wire.Query:
		err = sv.query(ctx, r)
	case wire.Next:
		id := r.Uint()
		if err = r.End(); err == nil {
			err = sv.moreWith(ctx, id, wire.Batch, nil)
		}
	case wire.CloseRows:
		id := r.Uint()
		if err = r.End(); err == nil {
			if cur := sv.cursors[id]; cur != nil {
				delete(sv.cursors, id)
				err = cur.end()
			}
			if err == nil {
				sv.answer(wire.Done)
			}
		}
	case wire.Begin:
		v, after := r.Uint(), r.Uint()
		if err = r.End(); err == nil {
			ctx = sv.readCtx(ctx, v>>1, after)
			if _, err = sv.c.BeginTx(ctx, driver.TxOptions{ReadOnly: v&1 == 1}); err == nil {
				sv.answer(wire.Done)
			}
		}
	case wire.Commit, wire.Rollback:
		_, _ = r.Uint(), r.Uint()
		if err = r.End(); err == nil {
			tx := tx{c: sv.c, ctx: ctx}
			if t == wire.Commit {
				err = tx.Commit()
			} else {
				err = tx.Rollback()
			}
			if err == nil {
				sv.answer(wire.Done)
			}
		}
	case wire.ReadIndex:
		if err = r.End(); err == nil {
			var i uint64
			if i, err = sv.b.ReadIndex(ctx); err == nil {
				sv.answer(wire.Index)
				sv.w.Uint(i)
			}
		}
	default:
		err = fmt.Errorf("%w: request type %d", wire.ErrMalformed, t)
	}
	if err != nil {
		sv.fail(err)
		return !errors.Is(err, wire.ErrMalformed)
	}
	return true
}

// answer starts an answer of type t with the connection's state.
func (sv *server) answer(t wire.Type) {
	sv.w.Reset(t)
	sv.c.mu.Lock()
	inTx := sv.c.inTx
	i := sv.c.lastCommit
	sv.c.lastCommit = 0
	sv.c.mu.Unlock()
	sv.w.Bool(inTx)
	sv.w.Uint(i)
}

func (sv *server) fail(err error) {
	if sv.c == nil {
		sv.w.Reset(wire.Failure)
		sv.w.Bool(false)
		sv.w.Uint(0)
	} else {
		sv.answer(wire.Failure)
	}
	putError(&sv.w, err)
}

func (sv *server) hello(ctx context.Context, r *wire.Reader) bool {
	name := r.String()
	if err := r.End(); err != nil {
		sv.fail(err)
		return false
	}
	if err := sv.b.CheckLeader(); err != nil {
		var nle *errs.NotLeaderError
		if !errors.As(err, &nle) {
			sv.fail(err)
			return false
		}
		sv.w.Reset(wire.Welcome)
		sv.w.Bool(false)
		sv.w.Uint(uint64(nle.LeaderID))
		sv.w.String(nle.LeaderAddress)
		return false
	}
	db, err := sv.b.Database(ctx, name)
	if err == nil {
		err = db.Failed()
	}
	if err == nil {
		sv.c, err = newConn(ctx, sv.b, db, name, Options{}, true)
	}
	if err != nil {
		sv.fail(err)
		return false
	}
	id, addr := sv.b.Self()
	sv.w.Reset(wire.Welcome)
	sv.w.Bool(true)
	sv.w.Uint(id)
	sv.w.String(addr)
	return true
}

// readCtx gives ctx the read level in flags and the index to wait for.
func (sv *server) readCtx(ctx context.Context, flags, after uint64) context.Context {
	if flags&flagLinearizable != 0 {
		ctx = WithReadLevel(ctx, Linearizable)
	}
	if after != 0 {
		ctx = WithAfter(ctx, after)
	}
	return ctx
}

// request reads the common part of Exec and Query.
func (sv *server) request(ctx context.Context, r *wire.Reader) (context.Context, string, []driver.NamedValue, error) {
	flags, after, query := r.Uint(), r.Uint(), r.String()
	n := r.Count(3)
	args := make([]driver.NamedValue, n)
	for i := range args {
		args[i].Name = r.String()
		args[i].Ordinal = int(r.Uint())
		args[i].Value = r.Value()
	}
	if err := r.End(); err != nil {
		return nil, "", nil, err
	}
	return sv.readCtx(ctx, flags, after), query, args, nil
}

// prepare returns the statement for query, prepared once per session and
// kept, unless an open cursor steps the kept one: then a statement of its
// own (owned), which the caller closes when done with it. Running the
// kept one would reset the cursor's rows under it.
func (sv *server) prepare(ctx context.Context, query string) (s *stmt, owned bool, err error) {
	if s := sv.stmts[query]; s != nil && !s.closed {
		if !sv.inUse(s) {
			return s, false, nil
		}
		owned = true
	}
	if !owned && len(sv.stmts) >= 64 {
		sv.dropStatements()
	}
	ds, err := sv.c.PrepareContext(ctx, query)
	if err != nil {
		return nil, false, err
	}
	s = ds.(*stmt)
	if !owned {
		sv.stmts[query] = s
	}
	return s, owned, nil
}

func (sv *server) inUse(s *stmt) bool {
	for _, cur := range sv.cursors {
		if cur.s == s {
			return true
		}
	}
	return false
}

// dropStatements closes the prepared statements that no cursor uses.
func (sv *server) dropStatements() {
	used := map[*stmt]bool{}
	for _, cur := range sv.cursors {
		used[cur.s] = true
	}
	for q, s := range sv.stmts {
		if !used[s] {
			s.Close()
			delete(sv.stmts, q)
		}
	}
}

func (sv *server) exec(ctx context.Context, r *wire.Reader) error {
	ctx, query, args, err := sv.request(ctx, r)
	if err != nil {
		return err
	}
	var res driver.Result
	if len(args) == 0 {
		res, err = sv.c.ExecContext(ctx, query, nil)
	} else {
		var s *stmt
		var owned bool
		if s, owned, err = sv.prepare(ctx, query); err == nil {
			res, err = s.ExecContext(ctx, args)
			if owned {
				s.Close()
			}
		}
	}
	if err != nil {
		return err
	}
	sv.answer(wire.Result)
	id, _ := res.LastInsertId()
	n, _ := res.RowsAffected()
	sv.w.Int(id)
	sv.w.Int(n)
	return nil
}

func (sv *server) query(ctx context.Context, r *wire.Reader) error {
	ctx, query, args, err := sv.request(ctx, r)
	if err != nil {
		return err
	}
	s, owned, err := sv.prepare(ctx, query)
	if err != nil {
		return err
	}
	dr, err := s.QueryContext(ctx, args)
	if err != nil {
		if owned {
			s.Close()
		}
		return err
	}
	sv.next++
	id := sv.next
	sv.cursors[id] = &cursor{s: s, owned: owned, rows: dr}
	rs := dr.(*rows)
	var head wire.Writer
	head.Reset(0)
	head.Uint(id)
	head.Bool(s.readOnly)
	head.Uint(uint64(len(rs.cols)))
	for i, name := range rs.cols {
		head.String(name)
		head.String(rs.declNames[i])
		head.Uint(uint64(rs.decl[i]))
	}
	return sv.moreWith(ctx, id, wire.RowsStart, head.Body())
}

// moreWith answers with type t, head, and the next batch of cursor id's
// rows, stepped with ctx (the request's: an interrupt stops it).
func (sv *server) moreWith(ctx context.Context, id uint64, t wire.Type, head []byte) error {
	cur := sv.cursors[id]
	if cur == nil {
		return fmt.Errorf("dqlite: no open rows with id %d (closed, or ended by an error)", id)
	}
	cur.rows.(*rows).ctx = ctx
	ncols := len(cur.rows.Columns())
	dest := make([]driver.Value, ncols)
	n, done := 0, false
	var rows wire.Writer
	rows.Reset(0)
	for n < batchRows && rows.Len() < batchBytes {
		err := cur.rows.Next(dest)
		if err == io.EOF {
			done = true
			break
		}
		if err != nil {
			delete(sv.cursors, id)
			cur.end()
			return err
		}
		for _, v := range dest {
			if err := rows.Value(v); err != nil {
				delete(sv.cursors, id)
				cur.end()
				return err
			}
		}
		n++
	}
	if done {
		delete(sv.cursors, id)
		if err := cur.end(); err != nil {
			return err
		}
	}
	sv.answer(t)
	sv.w.Append(head)
	sv.w.Uint(uint64(n))
	sv.w.Append(rows.Body())
	sv.w.Bool(done)
	return nil
}
