package main

import (
	"bytes"
	"debug/elf"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cfsroot/cfsroot/initramfs"
	"github.com/cfsroot/cfsroot/internal/testutil"
)

func TestParseFile(t *testing.T) {
	for _, tc := range []struct {
		arg  string
		want initramfs.File
		err  string
	}{
		{"a:/b", initramfs.File{Src: "a", Dst: "/b"}, ""},
		{"a:/b:0600", initramfs.File{Src: "a", Dst: "/b", Mode: 0o600}, ""},
		{"a", initramfs.File{}, "want SRC:DST"},
		{":/b", initramfs.File{}, "want SRC:DST"},
		{"a:/b:rw", initramfs.File{}, "not octal"},
		{"a:/b:4755", initramfs.File{}, "not octal"},
		{"a:/b:0644:x", initramfs.File{}, "want SRC:DST"},
	} {
		got, err := parseFile(tc.arg)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("parseFile(%q) error = %v, want %q", tc.arg, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("parseFile(%q) = %+v, %v; want %+v", tc.arg, got, err, tc.want)
		}
	}
}

func TestRun(t *testing.T) {
	dir := t.TempDir()
	init := filepath.Join(dir, "init")
	if err := os.WriteFile(init, []byte("\x7fELF"), 0o755); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "initrd")
	var stdout, stderr bytes.Buffer
	t.Setenv("SOURCE_DATE_EPOCH", "1700000000")
	if err := run([]string{"-o", out, "-init", init, "-file", init + ":/bin/x:0700", "-compress", "gzip"}, &stdout, &stderr); err != nil {
		t.Fatalf("run: %v\n%s", err, stderr.String())
	}
	if !strings.Contains(stdout.String(), out+": ") {
		t.Errorf("summary = %q", stdout.String())
	}
	if b, err := os.ReadFile(out); err != nil || !bytes.HasPrefix(b, []byte{0x1f, 0x8b}) {
		t.Errorf("output is not gzip: %v", err)
	}
	for _, tc := range []struct {
		args  []string
		usage bool
		err   string
	}{
		{[]string{"-init", init}, true, "-o and -init are required"},
		{[]string{"-o", out, "-init", init, "extra"}, true, "unexpected argument"},
		{[]string{"-o", out, "-init", init, "-file", "x"}, true, "want SRC:DST"},
		{[]string{"-o", out, "-init", init, "-compress", "lz4"}, false, "unknown compression"},
	} {
		err := run(tc.args, &stdout, &stderr)
		_, isUsage := err.(usageError)
		if err == nil || !strings.Contains(err.Error(), tc.err) || isUsage != tc.usage {
			t.Errorf("run(%q) = %v (usage error %v), want %q (usage error %v)", tc.args, err, isUsage, tc.err, tc.usage)
		}
	}
	t.Setenv("SOURCE_DATE_EPOCH", "yesterday")
	if err := run([]string{"-o", out, "-init", init}, &stdout, &stderr); err == nil || !strings.Contains(err.Error(), "SOURCE_DATE_EPOCH") {
		t.Errorf("bad SOURCE_DATE_EPOCH: %v", err)
	}
}

// TestRunConfig: -config is loaded with the init's parser at build time; a
// config the init would refuse stops the build with the parser's reason and
// leaves no initramfs (and an existing one untouched).
func TestRunConfig(t *testing.T) {
	dir := t.TempDir()
	init := filepath.Join(dir, "init")
	if err := os.WriteFile(init, []byte("\x7fELF"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, config, err string
	}{
		{"valid", `{"disk": "LABEL=cfsroot", "slots": ["a", "b"], "tpm": "optional"}`, ""},
		{"misspelt key", `{"disk": "LABEL=cfsroot", "slots": ["a"], "tmp": "optional"}`, `"tmp"`},
		{"not JSON", `{"disk": "LABEL=cfsroot",`, "config"},
		{"bad value", `{"disk": "LABEL=cfsroot", "slots": ["a"], "tpm": "sometimes"}`, "sometimes"},
		{"no slots", `{"disk": "LABEL=cfsroot"}`, "slot"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := filepath.Join(t.TempDir(), "config.json")
			if err := os.WriteFile(cfg, []byte(tc.config), 0o644); err != nil {
				t.Fatal(err)
			}
			out := filepath.Join(t.TempDir(), "initrd")
			var stdout, stderr bytes.Buffer
			err := run([]string{"-q", "-o", out, "-init", init, "-config", cfg, "-compress", "none"}, &stdout, &stderr)
			if tc.err == "" {
				if err != nil {
					t.Fatalf("run: %v", err)
				}
				b, err := os.ReadFile(out)
				if err != nil || !bytes.Contains(b, []byte(tc.config)) {
					t.Errorf("initramfs lacks the config byte for byte (%v)", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.err) || !strings.Contains(err.Error(), "-config") {
				t.Fatalf("run = %v, want an error naming -config and %s", err, tc.err)
			}
			if _, err := os.Stat(out); !os.IsNotExist(err) {
				t.Errorf("an initramfs was written: %v", err)
			}
			if err := os.WriteFile(out, []byte("old"), 0o644); err != nil {
				t.Fatal(err)
			}
			run([]string{"-q", "-o", out, "-init", init, "-config", cfg}, &stdout, &stderr)
			if b, _ := os.ReadFile(out); string(b) != "old" {
				t.Error("a refused build changed the existing initramfs")
			}
		})
	}
}

// TestShell: with allow_shell in the config, the initramfs carries u-root's
// gosh at /bin/sh and core commands in /bin (issue 12, finding 13). The
// archive is unpacked by cpio(1), the binaries are checked to be static
// ELF, and the unpacked shell runs a command line that uses ls and cat
// from the unpacked /bin. Without allow_shell (or with -shell no) there is
// no /bin.
func TestShell(t *testing.T) {
	testutil.RequireTool(t, "cpio")
	dir := t.TempDir()
	init := filepath.Join(dir, "init")
	os.WriteFile(init, []byte("\x7fELF"), 0o755)
	withShell := filepath.Join(dir, "shell.json")
	os.WriteFile(withShell, []byte(`{"disk": "LABEL=x", "slots": ["a"], "on_failure": "shell", "allow_shell": true}`), 0o644)
	noShell := filepath.Join(dir, "plain.json")
	os.WriteFile(noShell, []byte(`{"disk": "LABEL=x", "slots": ["a"]}`), 0o644)

	unpack := func(t *testing.T, args ...string) string {
		t.Helper()
		out := filepath.Join(t.TempDir(), "initrd")
		var stdout, stderr bytes.Buffer
		if err := run(append([]string{"-o", out, "-init", init, "-compress", "none", "-q"}, args...), &stdout, &stderr); err != nil {
			t.Fatalf("run: %v\n%s", err, stderr.String())
		}
		root := t.TempDir()
		cmd := exec.Command("cpio", "-idm", "--quiet")
		cmd.Dir = root
		cmd.Stdin, _ = os.Open(out)
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("cpio: %v\n%s", err, b)
		}
		return root
	}

	start := time.Now()
	root := unpack(t, "-config", withShell)
	t.Logf("built and packed the shell in %v", time.Since(start).Round(time.Millisecond))
	for _, name := range append([]string{"sh"}, initramfs.ShellCommands...) {
		p := filepath.Join(root, "bin", name)
		fi, err := os.Stat(p)
		if err != nil {
			t.Errorf("/bin/%s: %v", name, err)
			continue
		}
		if fi.Mode().Perm() != 0o755 {
			t.Errorf("/bin/%s mode %v", name, fi.Mode())
		}
		f, err := elf.Open(p)
		if err != nil {
			t.Errorf("/bin/%s: %v", name, err)
			continue
		}
		for _, prog := range f.Progs {
			if prog.Type == elf.PT_INTERP {
				t.Errorf("/bin/%s is dynamically linked", name)
			}
		}
		f.Close()
	}
	os.WriteFile(filepath.Join(root, "hello"), []byte("hello from the initramfs\n"), 0o644)
	sh := exec.Command(filepath.Join(root, "bin/sh"), "-c", "echo shell works; ls "+root+"; cat "+filepath.Join(root, "hello"))
	sh.Env = []string{"PATH=" + filepath.Join(root, "bin")}
	out, err := sh.CombinedOutput()
	if err != nil {
		t.Fatalf("unpacked /bin/sh: %v\n%s", err, out)
	}
	for _, want := range []string{"shell works", "init", "hello from the initramfs"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("shell output lacks %q:\n%s", want, out)
		}
	}

	for _, args := range [][]string{{"-config", noShell}, {"-config", withShell, "-shell", "no"}} {
		if _, err := os.Stat(filepath.Join(unpack(t, args...), "bin")); !os.IsNotExist(err) {
			t.Errorf("%v: /bin exists (%v)", args, err)
		}
	}
	var stdout, stderr bytes.Buffer
	if err := run([]string{"-o", filepath.Join(dir, "x"), "-init", init, "-shell", "maybe"}, &stdout, &stderr); err == nil || !strings.Contains(err.Error(), "want auto, yes or no") {
		t.Errorf("-shell maybe: %v", err)
	}
}
