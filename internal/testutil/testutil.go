// Package testutil holds helpers shared by cfsroot's tests: finding the
// repository and the shared test data, and requiring the external tools that
// serve as oracles.
package testutil

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
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

// ComposefsTool returns the reference composefs 1.0.8 tool (mkcomposefs or
// composefs-info) that tools/fetch-mkcomposefs.sh caches: the oracle of the
// byte-identical image tests. Missing, it skips (fails under CI).
func ComposefsTool(t testing.TB, name string) string {
	t.Helper()
	p := filepath.Join(RepoRoot(t), ".cache", "composefs-sid", "bin", name)
	if _, err := os.Stat(p); err != nil {
		if InCI() {
			t.Fatalf("%s missing; tools/install-deps.sh runs tools/fetch-mkcomposefs.sh", p)
		}
		t.Skipf("%s missing: run tools/fetch-mkcomposefs.sh", p)
	}
	return p
}

// CachedKernel returns the directory where tools/fetch-kernel.sh caches
// Debian trixie's kernel (vmlinuz, config, lib/modules), honouring
// CFSROOT_CACHE. Missing, it skips, or fails when CFSROOT_VMTEST=1.
func CachedKernel(t testing.TB) string {
	t.Helper()
	cache := os.Getenv("CFSROOT_CACHE")
	if cache == "" {
		cache = filepath.Join(RepoRoot(t), ".cache")
	}
	k := filepath.Join(cache, "kernel", "trixie")
	if _, err := os.Stat(filepath.Join(k, ".complete")); err != nil {
		if os.Getenv("CFSROOT_VMTEST") == "1" {
			t.Fatalf("CFSROOT_VMTEST=1 but the trixie kernel is not in %s: run make deps", k)
		}
		t.Skipf("Debian trixie kernel not cached in %s: run make deps (tools/fetch-kernel.sh) to enable", k)
	}
	return k
}

// DebianKernel runs tools/fetch-kernel.sh SUITE (a no-op when cached) and
// returns the kernel's directory. Without apt or network it skips (fails
// under CI).
func DebianKernel(t testing.TB, suite string) string {
	t.Helper()
	out, err := exec.Command(filepath.Join(RepoRoot(t), "tools", "fetch-kernel.sh"), suite).Output()
	if err != nil {
		msg := err.Error()
		if ee, ok := err.(*exec.ExitError); ok {
			msg += ": " + string(ee.Stderr)
		}
		if InCI() {
			t.Fatalf("tools/fetch-kernel.sh %s failed: %s", suite, msg)
		}
		t.Skipf("cannot fetch Debian %s's kernel (needs apt and the network): %s; run tools/fetch-kernel.sh %s", suite, msg, suite)
	}
	return strings.TrimSpace(string(out))
}
