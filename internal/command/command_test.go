package command

import (
	"bytes"
	"errors"
	"reflect"
	"testing"
)

func sampleFrames() *Frames {
	return &Frames{
		Database: "test.db", Origin: 3, TxID: 1 << 40, PageSize: 512, DBSize: 7,
		Pages: []Page{{No: 1, Data: bytes.Repeat([]byte{1}, 512)}, {No: 7, Data: bytes.Repeat([]byte{7}, 512)}},
	}
}

func TestFrames_RoundTrip(t *testing.T) {
	f := sampleFrames()
	b := EncodeFrames(f)
	if len(b) > f.Size() {
		t.Fatalf("encoded %d bytes, Size said %d", len(b), f.Size())
	}
	got, err := Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, f) {
		t.Fatalf("got %+v, want %+v", got, f)
	}
}

func TestOpen_RoundTrip(t *testing.T) {
	o := Open{Database: "a.db", PageSize: 65536}
	got, err := Decode(EncodeOpen(o))
	if err != nil {
		t.Fatal(err)
	}
	if *got.(*Open) != o {
		t.Fatalf("got %+v, want %+v", got, o)
	}
}

func TestDecode_Rejects(t *testing.T) {
	good := EncodeFrames(sampleFrames())
	cases := map[string][]byte{
		"empty":     nil,
		"version":   append([]byte{9}, good[1:]...),
		"type":      append([]byte{version, 99}, good[2:]...),
		"truncated": good[:len(good)-1],
		"trailing":  append(append([]byte{}, good...), 0),
		"page size": EncodeOpen(Open{Database: "x", PageSize: 1000}),
		"name":      EncodeOpen(Open{Database: "", PageSize: 4096}),
	}
	for name, b := range cases {
		if _, err := Decode(b); !errors.Is(err, ErrFormat) {
			t.Errorf("%s: got %v, want ErrFormat", name, err)
		}
	}
}

func FuzzDecode(f *testing.F) {
	f.Add(EncodeFrames(sampleFrames()))
	f.Add(EncodeOpen(Open{Database: "test.db", PageSize: 4096}))
	f.Fuzz(func(t *testing.T, b []byte) {
		cmd, err := Decode(b)
		if err != nil {
			return
		}
		var again []byte
		switch c := cmd.(type) {
		case *Open:
			again = EncodeOpen(*c)
		case *Frames:
			again = EncodeFrames(c)
		}
		cmd2, err := Decode(again)
		if err != nil || !reflect.DeepEqual(cmd, cmd2) {
			t.Fatalf("decoded %+v does not survive re-encoding: %+v, %v", cmd, cmd2, err)
		}
	})
}

func TestFrames_Changes(t *testing.T) {
	f := sampleFrames()
	f.Changes = []TxChanges{
		{{Table: "t", Ops: OpInsert | OpDelete, Keys: []int64{-1 << 63, -5, 0, 3, 1<<63 - 1}}, {Table: "w", Ops: OpUpdate | OpPartial}},
		{},
		{{Table: "t", Ops: OpUpdate, Keys: []int64{42}}},
	}
	b := EncodeFrames(f)
	if len(b) > f.Size() {
		t.Fatalf("encoded %d bytes, Size said %d", len(b), f.Size())
	}
	got, err := Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	f.Changes[1] = TxChanges{} // decoded as an empty, non-nil list
	if !reflect.DeepEqual(got, f) {
		t.Fatalf("got %+v, want %+v", got.(*Frames).Changes, f.Changes)
	}
	// An entry of version 2 has no changes section: they are unknown.
	f = sampleFrames()
	b = EncodeFrames(f)
	v2 := append([]byte{2}, b[1:len(b)-1]...)
	if got, err := Decode(v2); err != nil || got.(*Frames).Changes != nil || len(got.(*Frames).Pages) != 2 {
		t.Fatalf("version 2: %v, %v", got, err)
	}
	// A count larger than what follows is refused, not allocated.
	bad := append(append([]byte{}, b[:len(b)-1]...), 0xff, 0xff, 0xff, 0xff, 0x0f)
	if _, err := Decode(bad); !errors.Is(err, ErrFormat) {
		t.Errorf("huge transaction count: %v", err)
	}
}

// A malformed entry is refused, whatever follows the field that failed:
// no count read from leftover bytes is allocated.
func TestDecode_ChangesAfterError(t *testing.T) {
	b := EncodeFrames(sampleFrames())
	for cut := 2; cut < len(b); cut += 7 {
		bad := append(append([]byte{}, b[:cut]...), 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f)
		if _, err := Decode(bad); !errors.Is(err, ErrFormat) {
			t.Fatalf("cut at %d: %v", cut, err)
		}
	}
	bad := EncodeOpen(Open{Database: "x", PageSize: 1000}) // bad page size
	bad[1] = byte(TypeFrames)
	bad = append(bad, make([]byte, 20)...)
	bad = append(bad, 0xff, 0xff, 0xff, 0xff, 0x0f)
	if _, err := Decode(bad); !errors.Is(err, ErrFormat) {
		t.Fatalf("bad page size then a count: %v", err)
	}
}
