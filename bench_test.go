package dqlite

import (
	"context"
	"database/sql"
	"fmt"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	_ "github.com/ncruces/go-sqlite3/driver"

	"github.com/godqlite/dqlite/driver"
)

// BenchmarkInsert measures 1-row INSERT transactions: from 1, 8 and 32
// goroutines on the leader of a 3-node cluster over loopback TCP (Raft log
// synced on every append; the leader pipelines concurrent commits), and
// from one on plain local SQLite through the same binding.
//
//	go test -run '^$' -bench BenchmarkInsert -benchtime 5s .
func BenchmarkInsert(b *testing.B) {
	for _, store := range []string{"bolt", "wal"} {
		for _, writers := range []int{1, 8, 32} {
			b.Run(fmt.Sprintf("dqlite-3-nodes-log-%s/writers-%d", store, writers), func(b *testing.B) {
				c := newCluster(b, 3, func(cfg *Config) { cfg.LogStore = store })
				benchInsertN(b, c.db(c.waitLeader(), "bench.db"), writers)
			})
		}
	}
	for _, sync := range []string{"normal", "full"} {
		b.Run("sqlite-local-wal-sync-"+sync, func(b *testing.B) {
			db, err := sql.Open("sqlite3", "file:"+filepath.Join(b.TempDir(), "bench.db")+
				"?_pragma=journal_mode(wal)&_pragma=synchronous("+sync+")")
			if err != nil {
				b.Fatal(err)
			}
			defer db.Close()
			benchInsert(b, db)
		})
	}
}

// benchInsertN runs b.N one-row transactions from writers goroutines and
// reports the rate and the commit latency's median and 99th percentile.
func benchInsertN(b *testing.B, db *sql.DB, writers int) {
	if _, err := db.Exec(`CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v TEXT)`); err != nil {
		b.Fatal(err)
	}
	db.SetMaxOpenConns(writers + 1)
	var next atomic.Int64
	lat := make([][]time.Duration, writers)
	errc := make(chan error, writers)
	b.ResetTimer()
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(b.N) {
				start := time.Now()
				tx, err := db.Begin()
				if err == nil {
					if _, err = tx.Exec(`INSERT INTO t (v) VALUES ('x')`); err == nil {
						err = tx.Commit()
					} else {
						tx.Rollback()
					}
				}
				if err != nil {
					errc <- err
					return
				}
				lat[w] = append(lat[w], time.Since(start))
			}
		}()
	}
	wg.Wait()
	b.StopTimer()
	select {
	case err := <-errc:
		b.Fatal(err)
	default:
	}
	var all []time.Duration
	for _, l := range lat {
		all = append(all, l...)
	}
	slices.Sort(all)
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "tx/s")
	if len(all) > 0 {
		b.ReportMetric(float64(all[len(all)/2].Microseconds())/1000, "p50-ms")
		b.ReportMetric(float64(all[len(all)*99/100].Microseconds())/1000, "p99-ms")
	}
}

func benchInsert(b *testing.B, db *sql.DB) {
	if _, err := db.Exec(`CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v TEXT)`); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		tx, err := db.Begin()
		if err != nil {
			b.Fatal(err)
		}
		if _, err := tx.Exec(`INSERT INTO t (v) VALUES ('x')`); err != nil {
			b.Fatal(err)
		}
		if err := tx.Commit(); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "tx/s")
}

// BenchmarkRestart measures how long a node takes from New to serving
// every committed row again, after 1k and after 100k commits, with the
// default snapshot settings: the time depends on the database's size and
// the entries since the last snapshot, not on the history.
//
//	go test -run '^$' -bench BenchmarkRestart -benchtime 3x .
func BenchmarkRestart(b *testing.B) {
	for _, commits := range []int{1000, 100000} {
		b.Run(fmt.Sprintf("commits=%d", commits), func(b *testing.B) {
			c := newCluster(b, 1)
			db := c.db(0, "test.db")
			if _, err := db.Exec(`CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)`); err != nil {
				b.Fatal(err)
			}
			for i := range commits {
				if _, err := db.Exec(`INSERT INTO t VALUES (?, 'some text')`, i); err != nil {
					b.Fatal(err)
				}
			}
			b.ResetTimer()
			for range b.N {
				b.StopTimer()
				c.stop(0)
				b.StartTimer()
				c.restart(0)
				db := c.db(0, "test.db")
				for {
					var n int
					if db.QueryRow(`SELECT count(*) FROM t`).Scan(&n) == nil && n == commits {
						break
					}
					time.Sleep(time.Millisecond)
				}
			}
			b.StopTimer()
			b.ReportMetric(float64(snapshotIndex(c.nodes[0])), "snapshot-index")
		})
	}
}

// BenchmarkLargeTransaction measures one transaction of 16 and 64 MiB (the
// default MaxTxSize) of 64 KiB blobs on the leader of a 3-node cluster
// with the default Raft timeouts: the time Commit takes (MB/s) and what it
// allocates (B/op), which is what Config.MaxTxSize's documentation quotes.
//
//	go test -run '^$' -bench BenchmarkLargeTransaction -benchtime 3x .
func BenchmarkLargeTransaction(b *testing.B) {
	for _, mib := range []int{16, 64} {
		b.Run(fmt.Sprintf("MiB=%d", mib), func(b *testing.B) {
			d := DefaultConfig()
			c := newCluster(b, 3, func(cfg *Config) {
				cfg.HeartbeatTimeout, cfg.ElectionTimeout = d.HeartbeatTimeout, d.ElectionTimeout
				cfg.LeaderLeaseTimeout, cfg.ApplyTimeout = d.LeaderLeaseTimeout, d.ApplyTimeout
				cfg.MaxTxSize = 80 << 20
			})
			db := c.db(c.waitLeader(), "bench.db")
			if _, err := db.Exec(`CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)`); err != nil {
				b.Fatal(err)
			}
			blob := make([]byte, 64<<10)
			rows := mib << 20 / len(blob) * 9 / 10 // pages of B-tree overhead stay under MaxTxSize
			b.SetBytes(int64(rows * len(blob)))
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				tx, err := db.Begin()
				if err != nil {
					b.Fatal(err)
				}
				if _, err := tx.Exec(`DELETE FROM t`); err != nil {
					b.Fatal(err)
				}
				for i := range rows {
					if _, err := tx.Exec(`INSERT INTO t VALUES (?, ?)`, i, blob); err != nil {
						b.Fatal(err)
					}
				}
				if err := tx.Commit(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkPointRead measures a SELECT by primary key over 10k rows, from
// one goroutine: on a follower's *sql.DB at the local level (the driver's
// cost per statement, with no Raft in the way), and at the linearizable
// level on the follower (a read index asked of the leader) and on the
// leader (a heartbeat round).
//
//	go test -run '^$' -bench BenchmarkPointRead .
func BenchmarkPointRead(b *testing.B) {
	c := newCluster(b, 3)
	l := c.waitLeader()
	db := c.db(l, "bench.db")
	if _, err := db.Exec(`CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT);
		INSERT INTO t SELECT value, 'value ' || value FROM generate_series(1, 10000)`); err != nil {
		b.Fatal(err)
	}
	f := c.db((l+1)%3, "bench.db")
	waitFor(b, 20*time.Second, "the rows on the follower", func() bool {
		var n int
		return f.QueryRow(`SELECT count(*) FROM t`).Scan(&n) == nil && n == 10000
	})
	for _, r := range []struct {
		name string
		db   *sql.DB
		ctx  context.Context
	}{
		{"follower-local", f, context.Background()},
		{"follower-linearizable", f, WithReadLevel(context.Background(), ReadLinearizable)},
		{"leader-linearizable", db, WithReadLevel(context.Background(), ReadLinearizable)},
	} {
		b.Run(r.name, func(b *testing.B) {
			var v string
			for i := range b.N {
				if err := r.db.QueryRowContext(r.ctx, `SELECT v FROM t WHERE id = ?`, i%10000+1).Scan(&v); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "reads/s")
		})
	}
}

// BenchmarkInsertForwarded measures 1-row INSERT transactions through a
// follower's *sql.DB (run on the leader over the client protocol) and a
// remote client's, beside the leader's own.
//
//	go test -run '^$' -bench BenchmarkInsertForwarded -benchtime 5s .
func BenchmarkInsertForwarded(b *testing.B) {
	c := newCluster(b, 3)
	l := c.waitLeader()
	remote, err := sql.Open(driver.Name, "dqlite://"+c.nodes[l].Address()+"/remote.db")
	if err != nil {
		b.Fatal(err)
	}
	defer remote.Close()
	for _, r := range []struct {
		name string
		db   *sql.DB
	}{
		{"leader", c.db(l, "leader.db")},
		{"follower", c.db((l+1)%3, "follower.db")},
		{"remote", remote},
	} {
		b.Run(r.name, func(b *testing.B) { benchInsert(b, r.db) })
	}
}

// BenchmarkFollowerLag measures, on an idle 3-node cluster, how long after
// Commit returns on the leader a follower's *sql.DB shows the row: the
// median and the 99th percentile, over b.N commits one at a time.
//
//	go test -run '^$' -bench BenchmarkFollowerLag -benchtime 200x .
func BenchmarkFollowerLag(b *testing.B) {
	c := newCluster(b, 3)
	l := c.waitLeader()
	db := c.db(l, "lag.db")
	if _, err := db.Exec(`CREATE TABLE t (id INTEGER PRIMARY KEY)`); err != nil {
		b.Fatal(err)
	}
	f := c.db((l+1)%3, "lag.db")
	var lags []time.Duration
	b.ResetTimer()
	for i := 1; i <= b.N; i++ {
		time.Sleep(20 * time.Millisecond) // idle between commits
		if _, err := db.Exec(`INSERT INTO t VALUES (?)`, i); err != nil {
			b.Fatal(err)
		}
		committed := time.Now()
		for {
			var n int
			if err := f.QueryRow(`SELECT count(*) FROM t WHERE id = ?`, i).Scan(&n); err == nil && n == 1 {
				break
			}
			if time.Since(committed) > 10*time.Second {
				b.Fatalf("the follower did not show row %d within 10s", i)
			}
		}
		lags = append(lags, time.Since(committed))
	}
	b.StopTimer()
	slices.Sort(lags)
	b.ReportMetric(float64(lags[len(lags)/2].Microseconds())/1000, "ms-median")
	b.ReportMetric(float64(lags[len(lags)*99/100].Microseconds())/1000, "ms-p99")
}
