package fsm

import (
	"os"
	"unsafe"

	"golang.org/x/sys/windows"
)

// mapRegion maps size bytes of f from off. Windows maps views at multiples
// of its allocation granularity (64 KiB), and wal-index regions are 32 KiB:
// the view starts at the boundary below off.
func mapRegion(f *os.File, off int64, size int) (mapping, error) {
	const granularity = 64 << 10
	align := off % granularity
	end := off + int64(size)
	h, err := windows.CreateFileMapping(windows.Handle(f.Fd()), nil, windows.PAGE_READWRITE,
		uint32(end>>32), uint32(end), nil)
	if err != nil {
		return mapping{}, err
	}
	defer windows.CloseHandle(h)
	start := off - align
	addr, err := windows.MapViewOfFile(h, windows.FILE_MAP_READ|windows.FILE_MAP_WRITE,
		uint32(start>>32), uint32(start), uintptr(align)+uintptr(size))
	if err != nil {
		return mapping{}, err
	}
	// The view is not Go memory: convert its address without vet's
	// objection to uintptr arithmetic turned into a pointer.
	view := *(*unsafe.Pointer)(unsafe.Pointer(&addr))
	b := unsafe.Slice((*byte)(view), int(align)+size)[align:]
	return mapping{b: b, base: addr}, nil
}

func unmapRegion(m mapping) { windows.UnmapViewOfFile(m.base) }
