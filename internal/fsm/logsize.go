package fsm

import "sync"

// logSizes remembers the sizes of the latest log entries the FSM applied,
// so that the node can bound the Raft log by bytes as well as by entries.
type logSizes struct {
	mu    sync.Mutex
	index []uint64
	size  []int64
}

// maxTracked bounds how many entries logSizes remembers.
const maxTracked = 1 << 16

func (s *logSizes) add(index uint64, n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.index) >= maxTracked {
		k := copy(s.index, s.index[maxTracked/2:])
		s.index = s.index[:k]
		k = copy(s.size, s.size[maxTracked/2:])
		s.size = s.size[:k]
	}
	s.index = append(s.index, index)
	s.size = append(s.size, int64(n))
}

// LogBytesSince returns the bytes of the entries applied after index.
func (f *FSM) LogBytesSince(index uint64) (n int64) {
	s := &f.sizes
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := len(s.index) - 1; i >= 0 && s.index[i] > index; i-- {
		n += s.size[i]
	}
	return n
}

// EntriesWithin returns how many of the latest entries hold at most max
// bytes together (at least one), up to limit.
func (f *FSM) EntriesWithin(max int64, limit uint64) uint64 {
	s := &f.sizes
	s.mu.Lock()
	defer s.mu.Unlock()
	var sum int64
	var n uint64
	for i := len(s.index) - 1; i >= 0 && n < limit; i-- {
		if n > 0 && sum+s.size[i] > max {
			return n
		}
		sum += s.size[i]
		n++
	}
	if sum > max {
		return 1 // one entry larger than the bound: keep it alone
	}
	return limit // every entry remembered fits: no bound from bytes
}
