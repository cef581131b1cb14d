package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cfsroot/cfsroot/initramfs"
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
