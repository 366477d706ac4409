package dqlite

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"

	"github.com/hashicorp/go-hclog"
)

// hclogger passes hashicorp/raft's logs (hclog) to a *slog.Logger.
type hclogger struct {
	hclog.Logger // a null logger: the methods not overridden below do nothing
	l            *slog.Logger
}

func newHclog(l *slog.Logger) hclog.Logger {
	return &hclogger{Logger: hclog.NewNullLogger(), l: l.With("component", "raft")}
}

func (h *hclogger) Log(level hclog.Level, msg string, args ...any) {
	lv := slog.LevelInfo
	switch {
	case level <= hclog.Debug:
		lv = slog.LevelDebug
	case level == hclog.Warn:
		lv = slog.LevelWarn
	case level >= hclog.Error && peerReset(args):
		// The peer closed its end with data unread (a node shutting
		// down does): worth a warning, not an error.
		lv = slog.LevelWarn
	case level >= hclog.Error && (closedConn(args) || toSpare(args)):
		// The node closed its own connection: Raft's transport reports
		// the read it was blocked in as an error, but this is how a
		// normal Close (or a dropped peer stream) ends.
		lv = slog.LevelDebug
	case level >= hclog.Error:
		lv = slog.LevelError
	}
	if !h.l.Enabled(context.Background(), lv) {
		return
	}
	if len(args)%2 == 1 {
		args = append(args[:len(args)-1], "extra", fmt.Sprint(args[len(args)-1]))
	}
	h.l.Log(context.Background(), lv, msg, args...)
}

func (h *hclogger) Trace(msg string, args ...any) { h.Log(hclog.Trace, msg, args...) }
func (h *hclogger) Debug(msg string, args ...any) { h.Log(hclog.Debug, msg, args...) }
func (h *hclogger) Info(msg string, args ...any)  { h.Log(hclog.Info, msg, args...) }
func (h *hclogger) Warn(msg string, args ...any)  { h.Log(hclog.Warn, msg, args...) }
func (h *hclogger) Error(msg string, args ...any) { h.Log(hclog.Error, msg, args...) }
func (h *hclogger) IsDebug() bool                 { return h.l.Enabled(context.Background(), slog.LevelDebug) }
func (h *hclogger) IsInfo() bool                  { return h.l.Enabled(context.Background(), slog.LevelInfo) }
func (h *hclogger) IsWarn() bool                  { return h.l.Enabled(context.Background(), slog.LevelWarn) }
func (h *hclogger) IsError() bool                 { return h.l.Enabled(context.Background(), slog.LevelError) }
func (h *hclogger) Named(name string) hclog.Logger {
	return &hclogger{Logger: h.Logger, l: h.l.With("name", name)}
}
func (h *hclogger) With(args ...any) hclog.Logger {
	return &hclogger{Logger: h.Logger, l: h.l.With(args...)}
}

// peerReset reports whether a log line's arguments carry a connection
// reset by the peer.
func peerReset(args []any) bool {
	for _, a := range args {
		if err, ok := a.(error); ok && strings.Contains(err.Error(), "connection reset by peer") {
			return true
		}
	}
	return false
}

// toSpare reports whether a log line's arguments say that Raft could not
// reach a spare, which is by design (see spareMark).
func toSpare(args []any) bool {
	for _, a := range args {
		if s := fmt.Sprint(a); strings.Contains(s, errSpare.Error()) || strings.Contains(s, spareMark) {
			return true
		}
	}
	return false
}

// closedConn reports whether a log line's arguments carry an error from a
// network connection that this process closed.
func closedConn(args []any) bool {
	for _, a := range args {
		// The transport's msgpack decoder wraps the error as text.
		if err, ok := a.(error); ok && (errors.Is(err, net.ErrClosed) || strings.Contains(err.Error(), net.ErrClosed.Error())) {
			return true
		}
	}
	return false
}
