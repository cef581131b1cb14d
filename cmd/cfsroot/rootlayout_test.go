package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestMkimageRootLayoutWarnings: mkimage warns about a tree cfsroot's init
// cannot boot (no /dev, /proc, /sys, /run directories, no executable
// /sbin/init resolved inside the tree), and says nothing about one it can,
// including a merged-/usr tree whose /sbin is a symlink.
func TestMkimageRootLayoutWarnings(t *testing.T) {
	dirs := func(root string, names ...string) {
		for _, n := range names {
			if err := os.MkdirAll(filepath.Join(root, n), 0o755); err != nil {
				t.Fatal(err)
			}
		}
	}
	file := func(root, name string, mode os.FileMode) {
		dirs(root, filepath.Dir(name))
		if err := os.WriteFile(filepath.Join(root, name), []byte("#!/bin/true\n"), mode); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		name string
		make func(root string)
		want []string // substrings of the warnings; none when empty
	}{
		{"complete", func(r string) { dirs(r, "dev", "proc", "sys", "run"); file(r, "sbin/init", 0o755) }, nil},
		{"merged usr", func(r string) {
			dirs(r, "dev", "proc", "sys", "run")
			file(r, "usr/sbin/init", 0o755)
			if err := os.Symlink("usr/sbin", filepath.Join(r, "sbin")); err != nil {
				t.Fatal(err)
			}
		}, nil},
		{"no proc, run a file", func(r string) {
			dirs(r, "dev", "sys")
			file(r, "run", 0o644)
			file(r, "sbin/init", 0o755)
		}, []string{"no directory /proc, /run"}},
		{"no init", func(r string) { dirs(r, "dev", "proc", "sys", "run") }, []string{"/sbin/init not found"}},
		{"init not executable", func(r string) { dirs(r, "dev", "proc", "sys", "run"); file(r, "sbin/init", 0o644) },
			[]string{"not executable"}},
		{"the host's init does not count", func(r string) {
			dirs(r, "dev", "proc", "sys", "run")
			if err := os.Symlink("/usr/sbin", filepath.Join(r, "sbin")); err != nil {
				t.Fatal(err)
			}
		}, []string{"/sbin/init not found"}},
		{"a source tree", func(r string) { file(r, "main.go", 0o644) },
			[]string{"no directory /dev, /proc, /sys, /run", "/sbin/init not found"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tmp := t.TempDir()
			root := filepath.Join(tmp, "root")
			dirs(root, ".")
			tc.make(root)
			_, stderr, err := runCmd(t, "mkimage", root, filepath.Join(tmp, "img.cfs"))
			if err != nil {
				t.Fatalf("mkimage: %v\n%s", err, stderr)
			}
			if len(tc.want) == 0 && stderr != "" {
				t.Errorf("warnings for a bootable tree:\n%s", stderr)
			}
			for _, w := range tc.want {
				if !strings.Contains(stderr, "warning: ") || !strings.Contains(stderr, w) {
					t.Errorf("stderr lacks a warning with %q:\n%s", w, stderr)
				}
			}
			if _, err := os.Stat(filepath.Join(tmp, "img.cfs")); err != nil {
				t.Errorf("the warnings stopped the image: %v", err)
			}
		})
	}
}
