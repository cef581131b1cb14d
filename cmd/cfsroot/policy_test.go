package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/cfsroot/cfsroot/internal/testutil"
	"github.com/cfsroot/cfsroot/rootfs/composefs"
	"github.com/cfsroot/cfsroot/rootfs/verity"
)

// policyTree is the image the policy tests generate rules for: path, mode,
// content.
var policyTree = []struct {
	path    string
	mode    uint32
	content string
}{
	{"bin/sh", 0o755, "\x7fELF" + strings.Repeat("shell", 2000)},
	{"bin/hello", 0o755, "#!/bin/sh\n" + strings.Repeat("echo hello\n", 20)},
	{"bin/short", 0o755, "#!/bin/sh\nexec hello\n"}, // inline: no rule possible
	{"lib/libc.so.6", 0o644, "\x7fELF" + strings.Repeat("libc", 3000)},
	{"lib/ld.bin", 0o644, "\x7fELF" + strings.Repeat("ld", 3000)}, // ELF told only by content
	{"share/doc", 0o644, strings.Repeat("documentation\n", 40)},
}

// policyImage writes policyTree as source files, an object store and an
// image made with the composefs writer.
func policyImage(t *testing.T) (src, store, image string) {
	t.Helper()
	dir := t.TempDir()
	src, store, image = filepath.Join(dir, "src"), filepath.Join(dir, "store"), filepath.Join(dir, "root.cfs")
	root := composefs.NewNode(composefs.ModeDir | 0o755)
	dirs := map[string]*composefs.Node{}
	for _, f := range policyTree {
		p := filepath.Join(src, f.path)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(f.content), os.FileMode(f.mode)); err != nil {
			t.Fatal(err)
		}
		n := composefs.NewNode(composefs.ModeRegular | f.mode)
		n.Size = uint64(len(f.content))
		if len(f.content) <= composefs.RecommendedInlineMax {
			n.Content = []byte(f.content)
		} else {
			d, err := verity.DigestReader(strings.NewReader(f.content), verity.Params{})
			if err != nil {
				t.Fatal(err)
			}
			h := fmt.Sprintf("%x", d.Sum)
			n.Payload, n.Digest = h[:2]+"/"+h[2:], d.Sum
			op := filepath.Join(store, "objects", n.Payload)
			if err := os.MkdirAll(filepath.Dir(op), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(op, []byte(f.content), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		dn, base := filepath.Split(f.path)
		dn = strings.TrimSuffix(dn, "/")
		d := dirs[dn]
		if d == nil {
			d = composefs.NewNode(composefs.ModeDir | 0o755)
			dirs[dn] = d
			if err := root.Add(dn, d); err != nil {
				t.Fatal(err)
			}
		}
		if err := d.Add(base, n); err != nil {
			t.Fatal(err)
		}
	}
	var b bytes.Buffer
	if _, err := composefs.Write(&b, root, nil); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(image, b.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return src, store, image
}

// expectedPolicy builds the expected text from `fsverity digest` of the
// source files (the independent oracle for the rule values).
func expectedPolicy(t *testing.T, src, header string, initramfs bool, files ...string) string {
	t.Helper()
	set := map[string]bool{}
	for _, f := range files {
		out := testutil.Run(t, "fsverity", "digest", "--compact", filepath.Join(src, f))
		set["sha256:"+strings.TrimSpace(string(out))] = true
	}
	var ds []string
	for d := range set {
		ds = append(ds, d)
	}
	sort.Strings(ds)
	var b strings.Builder
	b.WriteString(header + "\nDEFAULT action=ALLOW\nDEFAULT op=EXECUTE action=DENY\n")
	if initramfs {
		b.WriteString("op=EXECUTE boot_verified=TRUE action=ALLOW\n")
	}
	for _, d := range ds {
		b.WriteString("op=EXECUTE fsverity_digest=" + d + " action=ALLOW\n")
	}
	return b.String()
}

func TestPolicyGenerate(t *testing.T) {
	testutil.RequireTool(t, "fsverity")
	src, store, image := policyImage(t)
	tests := []struct {
		name  string
		args  []string
		want  []string // files whose digests are the rules
		inram bool
		hdr   string
	}{
		{"exec with store", []string{"--store", store}, []string{"bin/sh", "bin/hello", "lib/libc.so.6", "lib/ld.bin"}, false, "policy_name=cfsroot policy_version=0.0.1"},
		{"store is the objects dir", []string{"--store", filepath.Join(store, "objects"), "--name", "root", "--version", "2.0.65535"}, []string{"bin/sh", "bin/hello", "lib/libc.so.6", "lib/ld.bin"}, false, "policy_name=root policy_version=2.0.65535"},
		{"exec with source", []string{"--source", src}, []string{"bin/sh", "bin/hello", "lib/libc.so.6", "lib/ld.bin"}, false, "policy_name=cfsroot policy_version=0.0.1"},
		{"exec without store", nil, []string{"bin/sh", "bin/hello", "lib/libc.so.6"}, false, "policy_name=cfsroot policy_version=0.0.1"},
		{"all", []string{"--files", "all", "--allow-initramfs"}, []string{"bin/sh", "bin/hello", "lib/libc.so.6", "lib/ld.bin", "share/doc"}, true, "policy_name=cfsroot policy_version=0.0.1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, errs, err := runCLI(t, append(append([]string{"policy", "generate"}, tt.args...), image)...)
			if err != nil {
				t.Fatalf("%v\n%s", err, errs)
			}
			if want := expectedPolicy(t, src, tt.hdr, tt.inram, tt.want...); out != want {
				t.Errorf("policy:\n%s\nwant:\n%s", out, want)
			}
			if !strings.Contains(errs, "1 executables are stored inline") || !strings.Contains(errs, "\n  /bin/short\n") {
				t.Errorf("stderr does not name the inline executable:\n%s", errs)
			}
			noStore := !strings.Contains(strings.Join(tt.args, " "), "--store") && !strings.Contains(strings.Join(tt.args, " "), "--source")
			if got := strings.Contains(errs, "no --store"); got != (noStore && !strings.Contains(tt.name, "all")) {
				t.Errorf("no-store warning shown = %v:\n%s", got, errs)
			}
		})
	}

	// -o writes the same bytes to a file.
	o := filepath.Join(t.TempDir(), "p.ipe")
	stdout, _, err := runCLI(t, "policy", "generate", "--store", store, "-o", o, image)
	if err != nil || stdout != "" {
		t.Fatalf("-o: %v, stdout %q", err, stdout)
	}
	got, _ := os.ReadFile(o)
	if want := expectedPolicy(t, src, "policy_name=cfsroot policy_version=0.0.1", false, "bin/sh", "bin/hello", "lib/libc.so.6", "lib/ld.bin"); string(got) != want {
		t.Errorf("-o file:\n%s\nwant:\n%s", got, want)
	}
}

func TestPolicyGenerateErrors(t *testing.T) {
	_, _, image := policyImage(t)
	var ue *usageError
	for _, tt := range []struct {
		args  []string
		usage bool
		msg   string
	}{
		{[]string{"policy"}, true, "no subcommand"},
		{[]string{"policy", "frobnicate"}, true, "unknown subcommand"},
		{[]string{"policy", "generate"}, true, "want one IMAGE"},
		{[]string{"policy", "generate", "--files", "some", image}, true, "want exec or all"},
		{[]string{"policy", "generate", "--name", "a b", image}, true, "--name"},
		{[]string{"policy", "generate", "--version", "1.2", image}, true, "--version"},
		{[]string{"policy", "generate", "--store", "/nonexistent", image}, false, "object store"},
		{[]string{"policy", "generate", "--store", "/", "--source", "/", image}, true, "exclude each other"},
		{[]string{"policy", "generate", "--source", "/nonexistent", image}, false, "not a directory"},
		{[]string{"policy", "generate", "--source", t.TempDir(), image}, false, "source tree"},
		{[]string{"policy", "generate", "--store", t.TempDir(), image}, false, "object store"},
		{[]string{"policy", "generate", filepath.Join(t.TempDir(), "missing.cfs")}, false, "no such file"},
	} {
		_, _, err := runCLI(t, tt.args...)
		if err == nil || !strings.Contains(err.Error(), tt.msg) || errors.As(err, &ue) != tt.usage {
			t.Errorf("%q: err = %v, want one containing %q (usage error: %v)", tt.args, err, tt.msg, tt.usage)
		}
	}
}

func TestPolicySign(t *testing.T) {
	testutil.RequireTool(t, "openssl")
	dir := t.TempDir()
	policy := filepath.Join(dir, "policy.ipe")
	text := "policy_name=root policy_version=1.0.0\nDEFAULT action=ALLOW\nDEFAULT op=EXECUTE action=DENY\n" +
		"op=EXECUTE fsverity_digest=sha256:" + strings.Repeat("5a", 32) + " action=ALLOW\n"
	if err := os.WriteFile(policy, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, k := range testKeys {
		t.Run(k.name, func(t *testing.T) {
			key, cert := opensslKey(t, dir, k.name, k.args...)
			for _, nocerts := range []bool{false, true} {
				p7s := filepath.Join(dir, fmt.Sprintf("%s-%v.p7s", k.name, nocerts))
				args := []string{"policy", "sign", "--key", key, "--cert", cert, policy, p7s}
				osslArgs := []string{"smime", "-sign", "-nodetach", "-noattr", "-binary", "-outform", "der", "-in", policy, "-signer", cert, "-inkey", key}
				if nocerts {
					args = append(args, "--nocerts")
					osslArgs = append(osslArgs, "-nocerts")
				}
				if out, _, err := runCLI(t, args...); err != nil || !strings.Contains(out, "root 1.0.0") {
					t.Fatalf("policy sign: %v, %q", err, out)
				}
				// openssl verifies the signature and prints the content it carries.
				verify := []string{"smime", "-verify", "-binary", "-inform", "der", "-noverify", "-in", p7s}
				if nocerts {
					verify = append(verify, "-certfile", cert)
				}
				out, err := exec.Command("openssl", verify...).Output()
				if err != nil || string(out) != text {
					t.Errorf("openssl smime -verify: %v, content %q, want the policy", err, out)
				}
				if strings.HasPrefix(k.name, "rsa") {
					// PKCS#1 v1.5 is deterministic: the bytes must be openssl's.
					want := testutil.Run(t, "openssl", osslArgs...)
					if got, _ := os.ReadFile(p7s); !bytes.Equal(got, want) {
						t.Errorf("signature differs from `openssl %s`", strings.Join(osslArgs, " "))
					}
				}
			}
		})
	}
}

func TestPolicySignErrors(t *testing.T) {
	testutil.RequireTool(t, "openssl")
	dir := t.TempDir()
	key, cert := opensslKey(t, dir, "k", "-newkey", "rsa:2048")
	_, otherCert := opensslKey(t, dir, "other", "-newkey", "rsa:2048")
	bad := filepath.Join(dir, "bad.ipe")
	os.WriteFile(bad, []byte("policy_name=x policy_version=1\nDEFAULT action=ALLOW\n"), 0o644)
	good := filepath.Join(dir, "good.ipe")
	os.WriteFile(good, []byte("policy_name=x policy_version=1.0.0\nDEFAULT action=ALLOW\n"), 0o644)
	out := filepath.Join(dir, "out.p7s")
	var ue *usageError
	for _, tt := range []struct {
		args  []string
		usage bool
		msg   string
	}{
		{[]string{"policy", "sign", good, out}, true, "--key and --cert are required"},
		{[]string{"policy", "sign", "--key", key, "--cert", cert, good}, true, "want POLICY POLICY.p7s"},
		{[]string{"policy", "sign", "--key", key, "--cert", cert, bad, out}, false, "want A.B.C"},
		{[]string{"policy", "sign", "--key", key, "--cert", otherCert, good, out}, false, "does not belong"},
		{[]string{"policy", "sign", "--key", key, "--cert", cert, filepath.Join(dir, "none"), out}, false, "no such file"},
	} {
		_, _, err := runCLI(t, tt.args...)
		if err == nil || !strings.Contains(err.Error(), tt.msg) || errors.As(err, &ue) != tt.usage {
			t.Errorf("%q: err = %v, want one containing %q (usage error: %v)", tt.args, err, tt.msg, tt.usage)
		}
	}
	if _, err := os.Stat(out); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a failed sign left %s behind (%v)", out, err)
	}
}

// TestMkimageExternalExec: --external-exec gives small executables objects,
// so that the generated policy can allow them, and changes nothing else.
func TestMkimageExternalExec(t *testing.T) {
	testutil.RequireTool(t, "fsverity")
	src := t.TempDir()
	files := []struct {
		path, content string
		mode          os.FileMode
	}{
		{"bin/tiny", "#!/bin/sh\nexec big \"$@\"\n", 0o755},
		{"bin/big", "\x7fELF" + strings.Repeat("x", 500), 0o755},
		{"etc/small.conf", "a=b\n", 0o644},
		{"etc/data", strings.Repeat("y", 300), 0o644},
	}
	for _, f := range files {
		p := filepath.Join(src, f.path)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(f.content), f.mode); err != nil {
			t.Fatal(err)
		}
	}
	dir := t.TempDir()
	build := func(name string, extra ...string) (image, store string) {
		image, store = filepath.Join(dir, name+".cfs"), filepath.Join(dir, name+"-objects")
		args := append([]string{"mkimage", "--use-epoch", "--digest-store", store}, extra...)
		if _, errs, err := runCLI(t, append(args, src, image)...); err != nil {
			t.Fatalf("mkimage %v: %v\n%s", extra, err, errs)
		}
		return image, store
	}
	plainImg, plainStore := build("plain")
	extImg, extStore := build("external", "--external-exec")

	_, errs, err := runCLI(t, "policy", "generate", "--store", plainStore, plainImg)
	if err != nil || !strings.Contains(errs, "\n  /bin/tiny\n") {
		t.Errorf("policy of the plain image: %v; stderr does not name /bin/tiny:\n%s", err, errs)
	}
	out, errs, err := runCLI(t, "policy", "generate", "--store", extStore, extImg)
	if err != nil || strings.Contains(errs, "inline") {
		t.Errorf("policy of the --external-exec image: %v, stderr:\n%s", err, errs)
	}
	if want := expectedPolicy(t, src, "policy_name=cfsroot policy_version=0.0.1", false, "bin/tiny", "bin/big"); out != want {
		t.Errorf("policy:\n%s\nwant:\n%s", out, want)
	}
	// The small executable's object is in the store; the small data file
	// stays inline, as mkcomposefs would store it.
	tinyDigest := strings.TrimSpace(string(testutil.Run(t, "fsverity", "digest", "--compact", filepath.Join(src, "bin/tiny"))))
	if _, err := os.Stat(filepath.Join(extStore, tinyDigest[:2], tinyDigest[2:])); err != nil {
		t.Errorf("object of bin/tiny: %v", err)
	}
	dumped, _, err := runCLI(t, "dump", extImg)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, line := range strings.Split(dumped, "\n") {
		if strings.HasPrefix(line, "/etc/small.conf ") {
			found = true
			if !strings.Contains(line, ` a=b\n `) {
				t.Errorf("/etc/small.conf is not inline with --external-exec: %s", line)
			}
		}
	}
	if !found {
		t.Errorf("no /etc/small.conf in the dump:\n%s", dumped)
	}
	// Without small executables the flag changes no byte.
	os.Remove(filepath.Join(src, "bin/tiny"))
	a, _ := build("plain2")
	b, _ := build("external2", "--external-exec")
	ab, _ := os.ReadFile(a)
	bb, _ := os.ReadFile(b)
	if !bytes.Equal(ab, bb) {
		t.Error("--external-exec changed an image without small executables")
	}
}

// TestPolicySize: a signed policy must fit the 65535 bytes of PKCS#7 the
// kernel parses; generate warns and sign refuses beyond.
func TestPolicySize(t *testing.T) {
	testutil.RequireTool(t, "openssl")
	dir := t.TempDir()
	key, cert := opensslKey(t, dir, "k", "-newkey", "rsa:2048")
	policy := func(n int) string {
		var b strings.Builder
		b.WriteString("policy_name=cfsroot policy_version=0.0.1\nDEFAULT action=ALLOW\nDEFAULT op=EXECUTE action=DENY\n")
		for i := range n {
			fmt.Fprintf(&b, "op=EXECUTE fsverity_digest=sha256:%064x action=ALLOW\n", i)
		}
		return b.String()
	}
	p7s := filepath.Join(dir, "p.p7s")
	for _, tt := range []struct {
		rules int
		ok    bool
	}{{500, true}, {600, false}} {
		in := filepath.Join(dir, fmt.Sprintf("%d.ipe", tt.rules))
		os.WriteFile(in, []byte(policy(tt.rules)), 0o644)
		_, _, err := runCLI(t, "policy", "sign", "--key", key, "--cert", cert, in, p7s)
		if tt.ok {
			st, serr := os.Stat(p7s)
			if err != nil || serr != nil || st.Size() > 65535 {
				t.Errorf("%d rules: %v, %v", tt.rules, err, serr)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), "EMSGSIZE") {
			t.Errorf("%d rules: err = %v, want a refusal naming EMSGSIZE", tt.rules, err)
		}
	}

	// An image with 600 distinct executables: generate warns.
	src := t.TempDir()
	for i := range 600 {
		p := filepath.Join(src, "bin", fmt.Sprintf("p%03d", i))
		os.MkdirAll(filepath.Dir(p), 0o755)
		os.WriteFile(p, []byte(fmt.Sprintf("#!/bin/sh\n# program %d\n%s", i, strings.Repeat("#", 100))), 0o755)
	}
	image := filepath.Join(dir, "many.cfs")
	if _, errs, err := runCLI(t, "mkimage", src, image); err != nil {
		t.Fatalf("mkimage: %v\n%s", err, errs)
	}
	_, errs, err := runCLI(t, "policy", "generate", image)
	if err != nil || !strings.Contains(errs, "600 rules") || !strings.Contains(errs, "EMSGSIZE") {
		t.Errorf("generate with 600 rules: %v, stderr:\n%s", err, errs)
	}
}

// TestPolicyGenerateSignature: --mode signature writes the one-rule policy
// (loaded and enforced by the kernel in TestIPEComposefs and TestDemo), names
// an image's inline executables, and refuses the digest mode's flags.
func TestPolicyGenerateSignature(t *testing.T) {
	_, store, image := policyImage(t)
	want := "policy_name=os policy_version=1.2.3\nDEFAULT action=ALLOW\nDEFAULT op=EXECUTE action=DENY\n" +
		"op=EXECUTE fsverity_signature=TRUE action=ALLOW\n"
	out, errs, err := runCLI(t, "policy", "generate", "--mode", "signature", "--name", "os", "--version", "1.2.3")
	if err != nil || out != want {
		t.Fatalf("no image: %v\n%s\nwant\n%s", err, out, want)
	}
	out, errs, err = runCLI(t, "policy", "generate", "--mode", "signature", "--name", "os", "--version", "1.2.3", "--allow-initramfs", image)
	wantInitramfs := strings.Replace(want, "op=EXECUTE fsverity", "op=EXECUTE boot_verified=TRUE action=ALLOW\nop=EXECUTE fsverity", 1)
	if err != nil || out != wantInitramfs {
		t.Fatalf("with image: %v\n%s\nwant\n%s", err, out, wantInitramfs)
	}
	if !strings.Contains(errs, "1 executables are stored inline") || !strings.Contains(errs, image+":/bin/short") {
		t.Errorf("stderr does not name the inline executable:\n%s", errs)
	}
	var ue *usageError
	for _, args := range [][]string{
		{"--mode", "signature", "--store", store, image},
		{"--mode", "signature", "--files", "all"},
		{"--mode", "signature", image, image},
		{"--mode", "hash", image},
	} {
		if _, _, err := runCLI(t, append([]string{"policy", "generate"}, args...)...); !errors.As(err, &ue) {
			t.Errorf("%v: err %v, want a usage error", args, err)
		}
	}
}
