package ipe

import (
	"bytes"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/cfsroot/cfsroot/internal/testutil"
	"github.com/cfsroot/cfsroot/rootfs/composefs"
	"github.com/cfsroot/cfsroot/rootfs/composefs/reader"
	"github.com/cfsroot/cfsroot/rootfs/signature"
	"github.com/cfsroot/cfsroot/rootfs/verity"
)

// testFile is one file of the test tree.
type testFile struct {
	path    string
	mode    uint32 // permission bits
	content []byte
}

func elfBytes(seed byte, n int) []byte {
	b := []byte("\x7fELF\x02\x01\x01")
	for len(b) < n {
		b = append(b, seed, byte(len(b)))
	}
	return b
}

func script(body string, n int) []byte {
	b := []byte("#!/bin/sh\n" + body + "\n")
	for len(b) < n {
		b = append(b, "# padding\n"...)
	}
	return b
}

// testTree is a small root with every kind of file the generator tells
// apart.
var testTree = []testFile{
	{"usr/bin/prog", 0o755, elfBytes(1, 9000)},
	{"usr/bin/prog-copy", 0o755, elfBytes(1, 9000)}, // same content: one rule
	{"usr/bin/run.sh", 0o755, script("exec prog", 300)},
	{"usr/bin/tiny", 0o755, []byte("#!/bin/sh\nexec prog \"$@\"\n")}, // inline: warned about
	{"usr/bin/empty", 0o755, nil},                                    // no data: nothing
	{"usr/lib/libfoo.so.1", 0o644, elfBytes(2, 20000)},               // library without x bits
	{"usr/lib/plugin.bin", 0o644, elfBytes(3, 7000)},                 // ELF told by content only
	{"usr/share/hook", 0o644, script("echo hook", 500)},              // script told by content only
	{"usr/share/data.txt", 0o644, bytes.Repeat([]byte("data\n"), 100)},
	{"etc/small.conf", 0o644, []byte("key=value\n")}, // inline, not executable
}

// buildImage writes testTree as source files, an object store and a
// composefs image made with the writer, and returns the paths.
func buildImage(t *testing.T) (src, store, image string) {
	t.Helper()
	dir := t.TempDir()
	src, store, image = filepath.Join(dir, "src"), filepath.Join(dir, "objects"), filepath.Join(dir, "root.cfs")
	root := composefs.NewNode(composefs.ModeDir | 0o755)
	for _, f := range testTree {
		p := filepath.Join(src, f.path)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, f.content, os.FileMode(f.mode)); err != nil {
			t.Fatal(err)
		}
		n := composefs.NewNode(composefs.ModeRegular | f.mode)
		n.Size = uint64(len(f.content))
		switch {
		case len(f.content) == 0:
		case len(f.content) <= composefs.RecommendedInlineMax:
			n.Content = f.content
		default:
			d, err := verity.DigestReader(bytes.NewReader(f.content), verity.Params{})
			if err != nil {
				t.Fatal(err)
			}
			h := fmt.Sprintf("%x", d.Sum)
			n.Payload, n.Digest = h[:2]+"/"+h[2:], d.Sum
			op := filepath.Join(store, n.Payload)
			if err := os.MkdirAll(filepath.Dir(op), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(op, f.content, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		addPath(t, root, f.path, n)
	}
	var img bytes.Buffer
	if _, err := composefs.Write(&img, root, nil); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(image, img.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return src, store, image
}

func addPath(t *testing.T, root *composefs.Node, p string, n *composefs.Node) {
	t.Helper()
	parts := strings.Split(p, "/")
	dir := root
	for _, name := range parts[:len(parts)-1] {
		next := dir.Lookup(name)
		if next == nil {
			next = composefs.NewNode(composefs.ModeDir | 0o755)
			if err := dir.Add(name, next); err != nil {
				t.Fatal(err)
			}
		}
		dir = next
	}
	if err := dir.Add(parts[len(parts)-1], n); err != nil {
		t.Fatal(err)
	}
}

// fsverityDigests asks fsverity-utils for the digests of the source files.
func fsverityDigests(t *testing.T, src string, paths ...string) []string {
	t.Helper()
	tool := testutil.RequireTool(t, "fsverity")
	seen := map[string]bool{}
	var out []string
	for _, p := range paths {
		b, err := exec.Command(tool, "digest", "--compact", filepath.Join(src, p)).Output()
		if err != nil {
			t.Fatalf("fsverity digest %s: %v", p, err)
		}
		d := "sha256:" + strings.TrimSpace(string(b))
		if !seen[d] {
			seen[d] = true
			out = append(out, d)
		}
	}
	sort.Strings(out)
	return out
}

// ruleDigests returns the digests of the fsverity_digest rules in text, in
// order, checking each rule's exact form.
func ruleDigests(t *testing.T, text []byte) []string {
	t.Helper()
	var ds []string
	for _, line := range strings.Split(string(text), "\n") {
		if !strings.Contains(line, "fsverity_digest=") {
			continue
		}
		var d string
		if _, err := fmt.Sscanf(line, "op=EXECUTE fsverity_digest=%s action=ALLOW", &d); err != nil || line != "op=EXECUTE fsverity_digest="+d+" action=ALLOW" {
			t.Fatalf("malformed rule %q", line)
		}
		ds = append(ds, d)
	}
	return ds
}

func TestGenerate(t *testing.T) {
	src, store, image := buildImage(t)
	img, err := reader.Open(image)
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()

	tests := []struct {
		name    string
		files   Files
		store   bool
		allowed []string // files whose digests must be the rules
	}{
		{"exec with store", ExecFiles, true, []string{"usr/bin/prog", "usr/bin/prog-copy", "usr/bin/run.sh", "usr/lib/libfoo.so.1", "usr/lib/plugin.bin", "usr/share/hook"}},
		{"exec with source", ExecFiles, true, []string{"usr/bin/prog", "usr/bin/prog-copy", "usr/bin/run.sh", "usr/lib/libfoo.so.1", "usr/lib/plugin.bin", "usr/share/hook"}},
		{"exec without store", ExecFiles, false, []string{"usr/bin/prog", "usr/bin/prog-copy", "usr/bin/run.sh", "usr/lib/libfoo.so.1"}},
		{"all", AllFiles, false, []string{"usr/bin/prog", "usr/bin/run.sh", "usr/lib/libfoo.so.1", "usr/lib/plugin.bin", "usr/share/hook", "usr/share/data.txt"}},
		{"all with store", AllFiles, true, []string{"usr/bin/prog", "usr/bin/run.sh", "usr/lib/libfoo.so.1", "usr/lib/plugin.bin", "usr/share/hook", "usr/share/data.txt"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			opts := GenerateOptions{Name: "root", Version: "1.2.3", Files: tt.files}
			switch {
			case strings.Contains(tt.name, "source"):
				opts.Source = os.DirFS(src)
			case tt.store:
				opts.Objects = os.DirFS(store)
			}
			g, err := Generate(img, opts)
			if err != nil {
				t.Fatal(err)
			}
			text, err := g.Policy.MarshalText()
			if err != nil {
				t.Fatal(err)
			}
			want := fsverityDigests(t, src, tt.allowed...)
			got := ruleDigests(t, text)
			if strings.Join(got, "\n") != strings.Join(want, "\n") {
				t.Errorf("rules:\n%s\nwant (fsverity digest of the source files, sorted):\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
			}
			if wantHead := "policy_name=root policy_version=1.2.3\nDEFAULT action=ALLOW\nDEFAULT op=EXECUTE action=DENY\nop=EXECUTE fsverity_digest="; !bytes.HasPrefix(text, []byte(wantHead)) {
				t.Errorf("policy starts\n%s\nwant\n%s", text[:min(len(text), len(wantHead))], wantHead)
			}
			if got, want := strings.Join(g.InlineExecutables, ","), "/usr/bin/tiny"; got != want {
				t.Errorf("InlineExecutables = %q, want %q", got, want)
			}
			if len(g.NoDigest) != 0 || g.ContentChecked != tt.store {
				t.Errorf("NoDigest = %q, ContentChecked = %v", g.NoDigest, g.ContentChecked)
			}
			if _, err := Check(text); err != nil {
				t.Errorf("Check: %v", err)
			}
			// Deterministic: the same input gives the same bytes.
			g2, err := Generate(img, opts)
			if err != nil {
				t.Fatal(err)
			}
			if text2, _ := g2.Policy.MarshalText(); !bytes.Equal(text, text2) {
				t.Error("two runs gave different policies")
			}
		})
	}
}

func TestGenerateBadStore(t *testing.T) {
	_, _, image := buildImage(t)
	img, err := reader.Open(image)
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	_, err = Generate(img, GenerateOptions{Name: "n", Version: "0.0.1", Objects: os.DirFS(t.TempDir())})
	if err == nil || !strings.Contains(err.Error(), "object store") {
		t.Fatalf("Generate with an empty store: %v, want an error naming the object store", err)
	}
}

func TestMarshalText(t *testing.T) {
	d1, _ := verity.ParseDigest("sha256:" + strings.Repeat("ab", 32))
	d2, _ := verity.ParseDigest("sha512:" + strings.Repeat("01", 64))
	p := Policy{Name: "cfsroot", Version: "0.1.65535", AllowBootVerified: true, Digests: []verity.Digest{d1, d2}}
	got, err := p.MarshalText()
	if err != nil {
		t.Fatal(err)
	}
	want := "policy_name=cfsroot policy_version=0.1.65535\n" +
		"DEFAULT action=ALLOW\n" +
		"DEFAULT op=EXECUTE action=DENY\n" +
		"op=EXECUTE boot_verified=TRUE action=ALLOW\n" +
		"op=EXECUTE fsverity_digest=sha256:" + strings.Repeat("ab", 32) + " action=ALLOW\n" +
		"op=EXECUTE fsverity_digest=sha512:" + strings.Repeat("01", 64) + " action=ALLOW\n"
	if string(got) != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
	if h, err := Check(got); err != nil || h != (Header{"cfsroot", "0.1.65535"}) {
		t.Errorf("Check = %v, %v", h, err)
	}
	for _, bad := range []Policy{
		{Name: "a b", Version: "1.0.0"},
		{Name: "x", Version: "1.0"},
		{Name: "x", Version: "1.0.0", Digests: []verity.Digest{{Algorithm: verity.SHA256, Sum: []byte{1}}}},
	} {
		if _, err := bad.MarshalText(); err == nil {
			t.Errorf("MarshalText(%+v) succeeded", bad)
		}
	}
}

func TestNameAndVersion(t *testing.T) {
	for _, tt := range []struct {
		name string
		ok   bool
	}{
		{"cfsroot", true}, {"my-policy_1.2", true}, {"ü", true},
		{"", false}, {".", false}, {"..", false}, {"a/b", false}, {"a b", false},
		{"a\tb", false}, {"a#b", false}, {"a\x00b", false}, {strings.Repeat("x", 256), false},
	} {
		if err := CheckName(tt.name); (err == nil) != tt.ok {
			t.Errorf("CheckName(%q) = %v, want ok=%v", tt.name, err, tt.ok)
		}
	}
	for _, tt := range []struct {
		v    string
		want uint64
		ok   bool
	}{
		{"0.0.0", 0, true}, {"1.2.3", 1<<32 | 2<<16 | 3, true}, {"65535.65535.65535", 1<<48 - 1, true},
		{"1.2", 0, false}, {"1.2.3.4", 0, false}, {"1..3", 0, false}, {"65536.0.0", 0, false},
		{"-1.0.0", 0, false}, {"+1.0.0", 0, false}, {"1.0.0 ", 0, false}, {"a.b.c", 0, false},
	} {
		got, err := ParseVersion(tt.v)
		if (err == nil) != tt.ok || got != tt.want {
			t.Errorf("ParseVersion(%q) = %d, %v; want %d, ok=%v", tt.v, got, err, tt.want, tt.ok)
		}
	}
}

// TestCheck follows the kernel parser's rules (security/ipe/policy_parser.c).
func TestCheck(t *testing.T) {
	hex := strings.Repeat("0f", 32)
	for _, tt := range []struct {
		name, text string
		ok         bool
	}{
		{"minimal", "policy_name=a policy_version=0.0.1\nDEFAULT action=ALLOW\n", true},
		{"comments and CR", "# leading comment\r\npolicy_name=a policy_version=0.0.1 # trailing\r\n\r\nDEFAULT action=DENY  \n", true},
		{"tabs", "policy_name=a\tpolicy_version=0.0.1\nDEFAULT\top=EXECUTE\taction=DENY\nDEFAULT action=ALLOW", true},
		{"per-op defaults", "policy_name=a policy_version=0.0.1\nDEFAULT op=EXECUTE action=DENY\nDEFAULT op=FIRMWARE action=ALLOW\nDEFAULT op=KMODULE action=ALLOW\nDEFAULT op=KEXEC_IMAGE action=ALLOW\nDEFAULT op=KEXEC_INITRAMFS action=ALLOW\nDEFAULT op=POLICY action=ALLOW\nDEFAULT op=X509_CERT action=ALLOW\n", true},
		{"rules", "policy_name=a policy_version=0.0.1\nDEFAULT action=ALLOW\nop=EXECUTE fsverity_digest=sha256:" + hex + " action=ALLOW\nop=KMODULE boot_verified=TRUE fsverity_signature=TRUE action=DENY\n", true},
		{"no header", "DEFAULT action=ALLOW\n", false},
		{"empty", "# nothing\n", false},
		{"header order", "policy_version=0.0.1 policy_name=a\nDEFAULT action=ALLOW\n", false},
		{"header extra", "policy_name=a policy_version=0.0.1 x=y\nDEFAULT action=ALLOW\n", false},
		{"bad version", "policy_name=a policy_version=0.1\nDEFAULT action=ALLOW\n", false},
		{"no default", "policy_name=a policy_version=0.0.1\nDEFAULT op=EXECUTE action=DENY\n", false},
		{"duplicate default", "policy_name=a policy_version=0.0.1\nDEFAULT action=ALLOW\nDEFAULT action=DENY\n", false},
		{"default with property", "policy_name=a policy_version=0.0.1\nDEFAULT op=EXECUTE boot_verified=TRUE action=DENY\n", false},
		{"rule without op", "policy_name=a policy_version=0.0.1\nDEFAULT action=ALLOW\nboot_verified=TRUE action=ALLOW\n", false},
		{"unknown op", "policy_name=a policy_version=0.0.1\nDEFAULT action=ALLOW\nop=READ action=ALLOW\n", false},
		{"unknown property", "policy_name=a policy_version=0.0.1\nDEFAULT action=ALLOW\nop=EXECUTE path=/bin action=ALLOW\n", false},
		{"action not last", "policy_name=a policy_version=0.0.1\nDEFAULT action=ALLOW\nop=EXECUTE action=ALLOW boot_verified=TRUE\n", false},
		{"bad digest", "policy_name=a policy_version=0.0.1\nDEFAULT action=ALLOW\nop=EXECUTE fsverity_digest=" + hex + " action=ALLOW\n", false},
		{"lower-case action", "policy_name=a policy_version=0.0.1\nDEFAULT action=allow\n", false},
	} {
		_, err := Check([]byte(tt.text))
		if (err == nil) != tt.ok {
			t.Errorf("%s: Check = %v, want ok=%v", tt.name, err, tt.ok)
		}
	}
}

func TestParseHeader(t *testing.T) {
	h, err := ParseHeader([]byte("\n# signed by cfsroot\n  policy_name=root policy_version=1.0.0 # comment\nDEFAULT action=ALLOW\n"))
	if err != nil || h != (Header{"root", "1.0.0"}) {
		t.Errorf("ParseHeader = %+v, %v", h, err)
	}
	for _, bad := range []string{"", "DEFAULT action=ALLOW\n", "policy_name=a/b policy_version=1.0.0\n", "policy_name=a\n"} {
		if _, err := ParseHeader([]byte(bad)); err == nil {
			t.Errorf("ParseHeader(%q) succeeded", bad)
		}
	}
}

// TestMaxRules: MaxRules(overhead) rules make a signed policy of at most
// MaxPolicySize bytes, one more rule does not.
func TestMaxRules(t *testing.T) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "ipe policy signer"},
		NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	for _, withCert := range []bool{true, false} {
		p := Policy{Name: "cfsroot", Version: "1.0.0", AllowBootVerified: true}
		signedSize := func(n int) int {
			p.Digests = p.Digests[:0]
			for i := range n {
				s := sha256.Sum256([]byte{byte(i), byte(i >> 8)})
				p.Digests = append(p.Digests, verity.Digest{Algorithm: verity.SHA256, Sum: s[:]})
			}
			text, err := p.MarshalText()
			if err != nil {
				t.Fatal(err)
			}
			sig, err := signature.Sign(text, key, cert, signature.Options{IncludeCertificate: withCert})
			if err != nil {
				t.Fatal(err)
			}
			return len(sig)
		}
		overhead := signedSize(1) - (len(mustText(t, p)))
		n := p.MaxRules(overhead)
		if got := signedSize(n); got > MaxPolicySize {
			t.Errorf("cert %v: %d rules (MaxRules) sign to %d bytes > %d", withCert, n, got, MaxPolicySize)
		}
		if got := signedSize(n + 1); got <= MaxPolicySize {
			t.Errorf("cert %v: %d rules (MaxRules+1) sign to %d bytes, still fit", withCert, n+1, got)
		}
		t.Logf("signature overhead %d bytes (certificate embedded: %v): at most %d rules", overhead, withCert, n)
	}
}

func mustText(t *testing.T, p Policy) []byte {
	t.Helper()
	b, err := p.MarshalText()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestSignedContentRefusesHostileDER: a policy file next to the image is
// the disk's; deep nesting overflowed the PKCS#7 parser's stack (a fatal
// error, not a panic), so it is refused before parsing (issue 12, finding 4).
func TestSignedContentRefusesHostileDER(t *testing.T) {
	for name, b := range map[string][]byte{
		"500k nested indefinite lengths": bytes.Repeat([]byte{0x30, 0x80}, 500_000),
		"3M nested indefinite lengths":   bytes.Repeat([]byte{0x30, 0x80}, 3_000_000),
	} {
		if _, err := SignedContent(b); !errors.Is(err, signature.ErrNotDER) {
			t.Errorf("%s: %v, want ErrNotDER", name, err)
		}
	}
}
