package vm

import (
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestConsole(t *testing.T) {
	path := filepath.Join(t.TempDir(), "console.log")
	c, err := newConsole(path)
	if err != nil {
		t.Fatal(err)
	}
	c.Write([]byte("first line\r\nsecond "))
	found := make(chan string, 1)
	go func() {
		l, err := c.wait(func(l string) bool { return strings.Contains(l, "third") }, 10*time.Second, "third")
		if err != nil {
			l = err.Error()
		}
		found <- l
	}()
	c.Write([]byte("part\nthird line\n"))
	if got := <-found; got != "third line" {
		t.Errorf("wait = %q, want the line written after it started", got)
	}
	if l, err := c.wait(func(l string) bool { return l == "first line" }, time.Second, "first"); err != nil || l != "first line" {
		t.Errorf("wait for an earlier line = %q, %v", l, err)
	}
	if _, err := c.wait(func(string) bool { return false }, 50*time.Millisecond, "nothing"); err == nil || !strings.Contains(err.Error(), "within") {
		t.Errorf("wait timeout error = %v", err)
	}
	c.Write([]byte("unterminated"))
	c.Close()
	c.Close()
	if _, err := c.wait(func(string) bool { return false }, time.Minute, "nothing"); err == nil || !strings.Contains(err.Error(), "VM ended") {
		t.Errorf("wait after close = %v, want a VM ended error at once", err)
	}
	want := []string{"first line", "second part", "third line", "unterminated"}
	if got := c.all(); strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("lines = %q, want %q", got, want)
	}
}

func TestFindKernelOverride(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("VMTEST_KERNEL", filepath.Join(dir, "bzImage"))
	t.Setenv("VMTEST_MODULES", "")
	if _, err := FindKernel(); err == nil || !strings.Contains(err.Error(), "VMTEST_MODULES") {
		t.Errorf("FindKernel with VMTEST_KERNEL and no modules = %v, want advice to set VMTEST_MODULES", err)
	}
}
