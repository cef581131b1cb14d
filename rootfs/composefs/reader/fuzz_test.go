package reader

import (
	"bytes"
	"errors"
	"io"
	"os"
	"testing"

	"github.com/cfsroot/cfsroot/rootfs/composefs"
	"github.com/cfsroot/cfsroot/rootfs/composefs/dump"
)

// FuzzReader feeds mutated images to the reader: it must return an error or
// a consistent walk, never panic or hang. Seeds are the small vector images.
func FuzzReader(f *testing.F) {
	for _, p := range vectorImages(f) {
		if st, err := os.Stat(p); err == nil && st.Size() <= 64<<10 {
			b, err := os.ReadFile(p)
			if err != nil {
				f.Fatal(err)
			}
			f.Add(b)
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		img, err := New(bytes.NewReader(data), int64(len(data)))
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("New: error %v does not wrap ErrCorrupt", err)
			}
			return
		}
		n := 0
		err = img.Walk(func(e *Entry) error {
			n++
			if e.Path == "" || e.Path[0] != '/' || len(e.Path) > MaxPathLen {
				t.Fatalf("bad path %q", e.Path)
			}
			if e.IsInline() && uint64(len(e.Content)) != e.Size {
				t.Fatalf("%s: %d bytes of content for size %d", e.Path, len(e.Content), e.Size)
			}
			return nil
		})
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("Walk: error %v does not wrap ErrCorrupt", err)
			}
			return
		}
		root, err := img.Tree()
		if err != nil || root == nil {
			t.Fatalf("Walk succeeded but Tree failed: %v", err)
		}
		// What the reader accepts must not crash the formatter or the
		// writer (which may still refuse it, e.g. over its input limits).
		if err := dump.Write(io.Discard, root); err != nil {
			t.Fatalf("dump.Write: %v", err)
		}
		composefs.Write(io.Discard, root, nil)
	})
}
