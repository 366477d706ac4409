package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
)

// selfRSS returns this process's resident memory and its peak, in bytes.
func selfRSS() (rss, peak int64) {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0, 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, _ := strings.Cut(line, ":")
		f := strings.Fields(v)
		if len(f) == 0 {
			continue
		}
		n, _ := strconv.ParseInt(f[0], 10, 64)
		switch k {
		case "VmRSS":
			rss = n << 10
		case "VmHWM":
			peak = n << 10
		}
	}
	return rss, peak
}

// deviceWrites returns the bytes written so far to the block device that
// holds dir, from the kernel's counters (every writer on the device).
func deviceWrites(dir string) (int64, bool) {
	var st syscall.Stat_t
	if err := syscall.Stat(dir, &st); err != nil {
		return 0, false
	}
	major, minor := (st.Dev>>8)&0xfff|(st.Dev>>32)&^0xfff, st.Dev&0xff|(st.Dev>>12)&^0xff
	b, err := os.ReadFile(fmt.Sprintf("/sys/dev/block/%d:%d/stat", major, minor))
	if err != nil {
		return 0, false
	}
	f := strings.Fields(string(b))
	if len(f) < 7 {
		return 0, false
	}
	sectors, err := strconv.ParseInt(f[6], 10, 64)
	return sectors * 512, err == nil
}
