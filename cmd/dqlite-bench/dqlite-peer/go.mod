module github.com/godqlite/dqlite/cmd/dqlite-bench/dqlite-peer

go 1.26.0

require (
	github.com/canonical/go-dqlite v1.11.5
	github.com/godqlite/dqlite/cmd/dqlite-bench v0.0.0
)

require (
	github.com/Rican7/retry v0.3.0 // indirect
	github.com/ghodss/yaml v1.0.0 // indirect
	github.com/google/renameio v1.0.1 // indirect
	github.com/mattn/go-sqlite3 v1.14.7 // indirect
	github.com/pkg/errors v0.9.1 // indirect
	gopkg.in/yaml.v2 v2.4.0 // indirect
)

replace (
	github.com/godqlite/dqlite => ../../..
	github.com/godqlite/dqlite/cmd/dqlite-bench => ..
)
