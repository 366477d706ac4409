// Package wal reads and writes SQLite's write-ahead log and its wal-index
// (the -shm file) in pure Go.
//
// It knows nothing about Raft or about any SQLite binding: it is the codec
// that the replication layers share. The formats are the ones described in
// SQLite's "WAL-mode File Format" document:
//
//   - the WAL file is a 32-byte header followed by frames, each a 24-byte
//     frame header and one page image; checksums chain from the header
//     through every frame;
//   - the wal-index starts with two copies of a 48-byte header and the
//     checkpoint information (136 bytes in all), followed by hash tables that
//     map page numbers to frames, one table per 32 KiB region.
//
// The wal-index is shared memory in native byte order. A follower that
// appends frames written elsewhere uses [Index.Append] and
// [Index.Publish] to make them visible to SQLite readers exactly the way
// SQLite's own writer would.
package wal
