package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestInstallBlessStatusGC drives the repository commands as a user does:
// mkimage + sign two versions, install both, status, bless, gc.
func TestInstallBlessStatusGC(t *testing.T) {
	dir := t.TempDir()
	key, cert := opensslKey(t, dir, "image signer", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256")
	store := filepath.Join(dir, "build-objects")
	mk := func(name string, files map[string]string) string {
		tree := filepath.Join(dir, name+"-tree")
		for p, c := range files {
			os.MkdirAll(filepath.Dir(filepath.Join(tree, p)), 0o755)
			os.WriteFile(filepath.Join(tree, p), []byte(c), 0o644)
		}
		img := filepath.Join(dir, name+".cfs")
		if _, stderr, err := runCmd(t, "mkimage", "--digest-store", store, tree, img); err != nil {
			t.Fatalf("mkimage: %v\n%s", err, stderr)
		}
		if _, stderr, err := runCmd(t, "sign", "--key", key, "--cert", cert, img, img+".sig"); err != nil {
			t.Fatalf("sign: %v\n%s", err, stderr)
		}
		return img
	}
	common := strings.Repeat("shared content\n", 100)
	img1 := mk("v1", map[string]string{"bin/app": strings.Repeat("v1\n", 100), "lib/x": common})
	img2 := mk("v2", map[string]string{"bin/app": strings.Repeat("v2\n", 100), "lib/x": common})
	repoDir := filepath.Join(dir, "disk", "composefs")
	status := filepath.Join(dir, "status.json")
	booted := func(slot string) {
		os.WriteFile(status, []byte(`{"image":"`+slot+`","digest":"sha256:00"}`), 0o644)
	}

	out, stderr, err := runCmd(t, "install", "--repo", repoDir, "--store", store, "--trusted", cert, "--slots", "a,b", "--status", status, img1)
	if err != nil {
		t.Fatalf("install: %v\n%s", err, stderr)
	}
	for _, want := range []string{"into slot a", "2 copied", "known good: a"} {
		if !strings.Contains(out, want) {
			t.Errorf("first install says\n%s\nwant %q", out, want)
		}
	}
	booted("a")
	out, stderr, err = runCmd(t, "install", "--repo", repoDir, "--store", store, "--trusted", cert, "--slots", "a,b", "--tries", "2", "--status", status, img2)
	if err != nil {
		t.Fatalf("update: %v\n%s", err, stderr)
	}
	for _, want := range []string{"into slot b", "1 copied", "trial: b (2 tries left, 0 done)"} {
		if !strings.Contains(out, want) {
			t.Errorf("update says\n%s\nwant %q", out, want)
		}
	}
	out, _, err = runCmd(t, "status", "--repo", repoDir, "--trusted", cert, "--status", status)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "CN=image signer") || !strings.Contains(out, "trial (2 tries left") || !regexpLine(out, "a", "*", "good") {
		t.Errorf("status:\n%s", out)
	}
	booted("b")
	if out, _, err = runCmd(t, "bless", "--repo", repoDir, "--status", status); err != nil || !strings.Contains(out, "known good: b") {
		t.Errorf("bless: %v\n%s", err, out)
	}
	if out, _, err = runCmd(t, "bless", "--repo", repoDir, "--status", status); err != nil || !strings.Contains(out, "already known good") {
		t.Errorf("second bless: %v\n%s", err, out)
	}
	out, _, err = runCmd(t, "gc", "--repo", repoDir, "--dry-run", "--status", status)
	if err != nil || !strings.Contains(out, "would delete 0 objects") {
		t.Errorf("gc --dry-run: %v\n%s", err, out)
	}
	if _, _, err := runCmd(t, "install", "--repo", repoDir, "--store", store, "--trusted", cert, "--slot", "b", "--status", status, img1); err == nil || !strings.Contains(err.Error(), "booted") {
		t.Errorf("install into the booted slot: %v", err)
	}
}

// regexpLine reports whether some line of out has these fields in order.
func regexpLine(out string, fields ...string) bool {
	for _, l := range strings.Split(out, "\n") {
		f := strings.Fields(l)
		if len(f) >= len(fields) && strings.Join(f[:len(fields)], " ") == strings.Join(fields, " ") {
			return true
		}
	}
	return false
}
