package testutil

import (
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"testing"
)

// TestNoReferenceOutsideRepo: no file of the repository refers to a shared
// folder beside the checkout (a user's clone has none): tests take their
// data from the repository, the Go module cache or tools that make deps
// runs, and comments cite upstream sources.
func TestNoReferenceOutsideRepo(t *testing.T) {
	root := RepoRoot(t)
	// Built from pieces so that this file does not match itself.
	bad := regexp.MustCompile(`\.\.` + `/shared\b|\bshared` + `/composefs\b|Shared` + `Dir\(`)
	skip := map[string]bool{".git": true, ".cache": true, "out": true, "bin": true}
	n := 0
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		if d.IsDir() {
			if skip[rel] || (rel != "." && d.Name()[0] == '.' && d.Name() != ".ci") {
				return filepath.SkipDir
			}
			return nil
		}
		if !d.Type().IsRegular() {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		n++
		if loc := bad.FindIndex(b); loc != nil {
			t.Errorf("%s refers outside the repository: %q", rel, b[loc[0]:loc[1]])
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n < 50 {
		t.Fatalf("checked only %d files under %s", n, root)
	}
}
