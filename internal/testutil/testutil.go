// Package testutil holds helpers shared by cfsroot's tests: finding the
// repository and the shared test data, and requiring the external tools that
// serve as oracles.
package testutil

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// RepoRoot returns the directory holding go.mod, walking up from the test's
// working directory (its package directory).
func RepoRoot(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("testutil: no go.mod above the test's directory")
		}
		dir = parent
	}
}

// SharedDir returns ../shared beside the repository, where the project's
// shared test data (composefs vectors) lives; CI lays it out the same way.
func SharedDir(t testing.TB) string {
	t.Helper()
	dir := filepath.Join(RepoRoot(t), "..", "shared")
	if _, err := os.Stat(dir); err != nil {
		t.Fatalf("testutil: shared test data not found at %s: %v", dir, err)
	}
	return dir
}

// InCI reports whether the tests run under CI, where every tool is installed
// and a missing one is a failure rather than a reason to skip.
func InCI() bool { return os.Getenv("CI") != "" }

// RequireTool returns the path of an external tool. When it is missing the
// test is skipped with a hint (make deps installs it), or fails under CI.
func RequireTool(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if InCI() {
			t.Fatalf("%s not found in PATH; tools/install-deps.sh should have installed it", name)
		}
		t.Skipf("%s not found in PATH; run `make deps` to install it", name)
	}
	return p
}

// Run runs a command and fails the test with its output if it fails.
func Run(t testing.TB, name string, args ...string) []byte {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
	return out
}
