package reader

import (
	"bytes"
	"errors"
	"io/fs"
	"reflect"
	"strings"
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

// TestReadDir checks ReadDir against Walk for every directory.
func TestReadDir(t *testing.T) {
	_, data := writeTestImage(t)
	img, err := New(bytes.NewReader(data), int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	children := map[string][]string{}
	dirs := []string{}
	err = img.Walk(func(e *Entry) error {
		if e.IsDir() {
			dirs = append(dirs, e.Path)
		}
		if e.Path != "/" {
			parent := e.Path[:strings.LastIndex(e.Path, "/")]
			if parent == "" {
				parent = "/"
			}
			children[parent] = append(children[parent], e.Path)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range dirs {
		ents, err := img.ReadDir(d)
		if err != nil {
			t.Fatalf("ReadDir(%s): %v", d, err)
		}
		var got []string
		for _, e := range ents {
			got = append(got, e.Path)
			if w, err := img.Lookup(e.Path); err != nil || w.Mode != e.Mode || w.Nid != e.Nid {
				t.Errorf("ReadDir(%s) entry %s = %+v, Lookup gave %+v (%v)", d, e.Path, e, w, err)
			}
		}
		if !reflect.DeepEqual(got, children[d]) {
			t.Errorf("ReadDir(%s) = %q, Walk gave %q", d, got, children[d])
		}
	}
	if _, err := img.ReadDir("/nope"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("ReadDir(/nope) = %v", err)
	}
}
