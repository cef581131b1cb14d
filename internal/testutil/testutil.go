// Package testutil holds helpers shared by cfsroot's tests: finding the
// repository, and requiring the tools, kernels, oracles and privileges the
// tests need, under one strictness switch (Strict).
package testutil

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
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

// StrictEnv is the environment variable that decides whether a test whose
// tool, kernel, oracle or privilege is missing skips or fails. make test sets
// CFSROOT_STRICT=1: then every missing prerequisite is a failure that says
// what to run. Unset (make unittest, a plain go test), such tests skip.
const StrictEnv = "CFSROOT_STRICT"

// Strict reports whether CFSROOT_STRICT=1, under which nothing may skip for
// want of a tool, kernel, oracle or privilege.
func Strict() bool { return os.Getenv(StrictEnv) == "1" }

// Unavailable ends a test whose prerequisite is missing: under Strict it
// fails, otherwise it skips. The message should say what is missing and what
// to run to provide it.
func Unavailable(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if Strict() {
		t.Fatalf("%s (%s=1, set by make test, makes a missing prerequisite a failure)", msg, StrictEnv)
	}
	t.Skipf("%s (skipped; make test fails instead)", msg)
}

// RequireRoot ends the test (see Unavailable) unless it runs as root; why
// says what needs root.
func RequireRoot(t testing.TB, why string) {
	t.Helper()
	if os.Geteuid() != 0 {
		Unavailable(t, "%s needs root: run the tests as root (sudo make test)", why)
	}
}

// RequireTool returns the path of an external tool, or ends the test (see
// Unavailable) when it is not in PATH.
func RequireTool(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		Unavailable(t, "%s not found in PATH: run make deps (tools/install-deps.sh) to install it", name)
	}
	return p
}

// GoTool returns the go command: the one in PATH, else the toolchain that
// built the test.
func GoTool() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	return filepath.Join(runtime.GOROOT(), "bin", "go")
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

// ReadFile returns the content of the file at p, failing the test if it
// cannot be read.
func ReadFile(t testing.TB, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// ComposefsTool returns the reference composefs 1.0.8 tool (mkcomposefs or
// composefs-info) that tools/fetch-mkcomposefs.sh caches: the oracle of the
// byte-identical image tests. Missing, the test ends (see Unavailable).
func ComposefsTool(t testing.TB, name string) string {
	t.Helper()
	p := filepath.Join(RepoRoot(t), ".cache", "composefs-sid", "bin", name)
	if _, err := os.Stat(p); err != nil {
		Unavailable(t, "%s missing: run make deps (tools/fetch-mkcomposefs.sh)", p)
	}
	return p
}

// CachedKernel returns the directory where tools/fetch-kernel.sh caches
// Debian trixie's kernel (vmlinuz, config, lib/modules), honouring
// CFSROOT_CACHE. Missing, the test ends (see Unavailable).
func CachedKernel(t testing.TB) string {
	t.Helper()
	cache := os.Getenv("CFSROOT_CACHE")
	if cache == "" {
		cache = filepath.Join(RepoRoot(t), ".cache")
	}
	k := filepath.Join(cache, "kernel", "trixie")
	if _, err := os.Stat(filepath.Join(k, ".complete")); err != nil {
		Unavailable(t, "Debian trixie kernel not cached in %s: run make deps (tools/fetch-kernel.sh)", k)
	}
	return k
}

// DebianKernel runs tools/fetch-kernel.sh SUITE (a no-op when cached) and
// returns the kernel's directory. Without apt or network the test ends (see
// Unavailable). make deps runs the same script, so under make test it is
// cached and nothing is downloaded here.
func DebianKernel(t testing.TB, suite string) string {
	t.Helper()
	out, err := exec.Command(filepath.Join(RepoRoot(t), "tools", "fetch-kernel.sh"), suite).Output()
	if err != nil {
		msg := err.Error()
		if ee, ok := err.(*exec.ExitError); ok {
			msg += ": " + string(ee.Stderr)
		}
		Unavailable(t, "cannot fetch Debian %s's kernel (needs apt and the network): %s; run make deps (tools/fetch-kernel.sh %s)", suite, msg, suite)
	}
	return strings.TrimSpace(string(out))
}
