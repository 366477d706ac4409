//go:build !race

package dqlite

const raceEnabled = false
