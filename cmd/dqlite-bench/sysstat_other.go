//go:build !linux

package main

// selfRSS is not measured here.
func selfRSS() (rss, peak int64) { return 0, 0 }

// deviceWrites is not measured here.
func deviceWrites(string) (int64, bool) { return 0, false }
