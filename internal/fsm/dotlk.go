//go:build sqlite3_dotlk

package fsm

// With the sqlite3_dotlk build tag the binding keeps each connection's
// wal-index in private memory, so a follower's applied transactions could
// never reach its readers. Refuse to build rather than replicate wrongly.
var _ = dqlite_does_not_support_the_sqlite3_dotlk_build_tag
