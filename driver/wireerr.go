package driver

import (
	"context"
	"errors"
	"fmt"

	"github.com/ncruces/go-sqlite3"

	"github.com/godqlite/dqlite/internal/errs"
	"github.com/godqlite/dqlite/internal/wire"
)

// The error codes of the client protocol: each names one of the errors of
// package errs, so that an error that crossed the network still matches
// with errors.Is what it matched on the node that returned it.
var codes = []error{
	nil, // 0: another error; SQLite's code, if any, travels beside it
	errs.ErrNotLeader, errs.ErrLeadershipLost, errs.ErrNoQuorum, errs.ErrClosed,
	errs.ErrTxTooLarge, errs.ErrDiverged, errs.ErrNoDatabase, errs.ErrRefused,
	errs.ErrBusy, errs.ErrInvalidName, errs.ErrNoLeader, errReadOnlyTx,
	context.Canceled, context.DeadlineExceeded,
}

// RemoteError is an error that a node returned over the client protocol.
// errors.Is matches it against the error of package dqlite it stood for
// on that node, and against SQLite's error codes (sqlite3.CONSTRAINT and
// the like); errors.As gives a *dqlite.NotLeaderError.
type RemoteError struct {
	Msg  string
	kind error                     // one of codes, or nil
	code sqlite3.ExtendedErrorCode // SQLite's code, or 0
	nle  *errs.NotLeaderError
}

func (e *RemoteError) Error() string { return e.Msg }

// Unwrap gives the error it stood for, and SQLite's code.
func (e *RemoteError) Unwrap() []error {
	var l []error
	if e.nle != nil {
		l = append(l, e.nle)
	} else if e.kind != nil {
		l = append(l, e.kind)
	}
	if e.code != 0 {
		l = append(l, e.code)
	}
	return l
}

// putError encodes err for the client protocol.
func putError(w *wire.Writer, err error) {
	kind := 0
	for i, c := range codes {
		if c != nil && errors.Is(err, c) {
			kind = i
			break
		}
	}
	var code sqlite3.ExtendedErrorCode
	var se *sqlite3.Error
	var sc sqlite3.ErrorCode
	var sx sqlite3.ExtendedErrorCode
	switch {
	case errors.As(err, &se):
		code = se.ExtendedCode()
	case errors.As(err, &sx):
		code = sx
	case errors.As(err, &sc):
		code = sqlite3.ExtendedErrorCode(sc)
	}
	var leaderID uint64
	var leaderAddr string
	var nle *errs.NotLeaderError
	if errors.As(err, &nle) {
		leaderID, leaderAddr = uint64(nle.LeaderID), nle.LeaderAddress
	}
	w.Uint(uint64(kind))
	w.Uint(uint64(code))
	w.String(err.Error())
	w.Uint(leaderID)
	w.String(leaderAddr)
}

// getError decodes what putError wrote.
func getError(r *wire.Reader) error {
	kind := r.Uint()
	code := r.Uint()
	e := &RemoteError{Msg: r.String(), code: sqlite3.ExtendedErrorCode(code)}
	leaderID, leaderAddr := r.Uint(), r.String()
	if r.Err() != nil {
		return r.Err()
	}
	if kind < uint64(len(codes)) {
		e.kind = codes[kind]
	}
	if e.kind == errs.ErrNotLeader {
		e.nle = &errs.NotLeaderError{LeaderID: errs.NodeID(leaderID), LeaderAddress: leaderAddr}
	}
	return e
}

// errLost is the outcome of a statement or commit whose connection to the
// leader broke before the answer came: it may or may not have committed.
func errLost(err error) error {
	return &lostError{fmt.Errorf("%w: the connection to the leader broke before it answered, so the outcome is unknown (%v)",
		errs.ErrLeadershipLost, err), err}
}

// lostError is errLost's error; cause is the connection's.
type lostError struct {
	error
	cause error
}

func (e *lostError) Unwrap() error { return e.error }

// errRolledBack is the error of a forwarded transaction whose connection
// to the leader broke: the leader rolls it back, as it does every
// transaction whose connection goes away.
func errRolledBack(err error) error {
	return fmt.Errorf("%w: the connection to the leader broke; the transaction was rolled back (%v)",
		errs.ErrLeadershipLost, err)
}
