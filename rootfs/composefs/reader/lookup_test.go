package reader

import (
	"bytes"
	"errors"
	"io/fs"
	"reflect"
	"testing"
)

// TestLookup: Lookup finds every entry Walk finds, with the same metadata,
// and reports missing paths and paths through files as fs.ErrNotExist.
func TestLookup(t *testing.T) {
	_, data := writeTestImage(t)
	img, err := New(bytes.NewReader(data), int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	err = img.Walk(func(e *Entry) error {
		got, err := img.Lookup(e.Path)
		if err != nil {
			t.Errorf("Lookup(%s): %v", e.Path, err)
			return nil
		}
		want := *e
		want.HardlinkTo = ""
		if !reflect.DeepEqual(*got, want) {
			t.Errorf("Lookup(%s) = %+v, Walk gave %+v", e.Path, *got, want)
		}
		n++
		return nil
	})
	if err != nil || n < 5 {
		t.Fatalf("walk: %v (%d entries)", err, n)
	}
	for _, p := range []string{"/nope", "/sda1/x", "/a/b/c/d/e/f"} {
		if _, err := img.Lookup(p); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("Lookup(%s): %v, want fs.ErrNotExist", p, err)
		}
	}
	for _, p := range []string{"relative", "/../etc", "/./x"} {
		if _, err := img.Lookup(p); err == nil || errors.Is(err, fs.ErrNotExist) {
			t.Errorf("Lookup(%s): %v, want a usage error", p, err)
		}
	}
}
