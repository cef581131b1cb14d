package initramfs

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cfsroot/cfsroot/initramfs/layout"
	"github.com/cfsroot/cfsroot/internal/testutil"
)

func need(t *testing.T, cmds ...string) {
	t.Helper()
	for _, c := range cmds {
		testutil.RequireTool(t, c)
	}
}

func run(t *testing.T, stdin []byte, dir, name string, args ...string) []byte {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	cmd.Stdin = bytes.NewReader(stdin)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, stderr.String())
	}
	return out
}

func writeFile(t *testing.T, p string, data []byte, mode os.FileMode) string {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, data, mode); err != nil {
		t.Fatal(err)
	}
	return p
}

// synthTree makes a small module tree whose modules are compressed by the
// xz command, so that decompression is checked against an independent tool.
func synthTree(t *testing.T) (dir string, plain map[string][]byte) {
	t.Helper()
	need(t, "xz")
	dir = filepath.Join(t.TempDir(), "lib", "modules", "6.12.0-synth")
	plain = map[string][]byte{}
	for _, m := range []string{"kernel/lib/crc16.ko", "kernel/fs/ext4/ext4.ko", "kernel/crypto/crc32c_generic.ko", "kernel/lib/libcrc32c.ko"} {
		data := []byte("\x7fELF" + strings.Repeat(m, 500))
		plain[m] = data
		writeFile(t, filepath.Join(dir, m+".xz"), run(t, data, "", "xz", "-c", "--check=crc32"), 0o644)
	}
	writeFile(t, filepath.Join(dir, "modules.dep"), []byte(`kernel/fs/ext4/ext4.ko.xz: kernel/lib/crc16.ko.xz
kernel/lib/crc16.ko.xz:
kernel/crypto/crc32c_generic.ko.xz:
kernel/lib/libcrc32c.ko.xz:
`), 0o644)
	writeFile(t, filepath.Join(dir, "modules.softdep"), []byte("softdep libcrc32c pre: crc32c\n"), 0o644)
	writeFile(t, filepath.Join(dir, "modules.alias"), []byte("alias crc32c crc32c_generic\n"), 0o644)
	writeFile(t, filepath.Join(dir, "modules.builtin"), []byte("kernel/fs/overlayfs/overlay.ko\n"), 0o644)
	return dir, plain
}

func testCert(t *testing.T, dir string) string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "cfsroot test"},
		NotBefore:    time.Unix(0, 0),
		NotAfter:     time.Unix(1<<31, 0),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return writeFile(t, filepath.Join(dir, "signer.pem"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
}

// inputs returns a spec using every kind of input.
func inputs(t *testing.T) (Spec, map[string][]byte) {
	t.Helper()
	modDir, plain := synthTree(t)
	in := t.TempDir()
	s := Spec{
		Init:      writeFile(t, filepath.Join(in, "init"), []byte("\x7fELF static init"), 0o755),
		ModuleDir: filepath.Dir(filepath.Dir(filepath.Dir(modDir))), // the root holding lib/modules/KVER
		Modules:   []string{"ext4", "libcrc32c", "overlay"},
		Certs:     []string{testCert(t, in)},
		Config:    writeFile(t, filepath.Join(in, "cfsroot.conf"), []byte("config v1\n"), 0o600),
		Policy:    writeFile(t, filepath.Join(in, "policy.p7s"), []byte{0x30, 0x82, 0, 1, 0}, 0o644),
		Files: []File{
			{Src: writeFile(t, filepath.Join(in, "guest"), []byte("guest program"), 0o700), Dst: "/usr/bin/guest"},
			{Src: writeFile(t, filepath.Join(in, "data"), []byte("data"), 0o600), Dst: "/srv/data", Mode: 0o640},
		},
	}
	return s, plain
}

// TestBuildExtractsWithCpio unpacks the archive with GNU cpio and checks
// every file, and the module bytes against xz's own decompression.
func TestBuildExtractsWithCpio(t *testing.T) {
	need(t, "cpio", "gzip", "zstd")
	s, plain := inputs(t)
	for _, tc := range []struct {
		comp Compression
		cat  []string
	}{
		{Gzip, []string{"gzip", "-dc"}},
		{Zstd, []string{"zstd", "-dc"}},
		{None, []string{"cat"}},
	} {
		t.Run(string(tc.comp), func(t *testing.T) {
			s := s
			s.Compression = tc.comp
			s.FsverityCerts = []string{filepath.Join(filepath.Dir(s.Certs[0]), "objects.pem")}
			if err := os.WriteFile(s.FsverityCerts[0], testutil.ReadFile(t, s.Certs[0]), 0o644); err != nil {
				t.Fatal(err)
			}
			var buf bytes.Buffer
			res, err := Build(&buf, s)
			if err != nil {
				t.Fatal(err)
			}
			if len(res.Builtin) != 1 || res.Builtin[0] != "overlay" {
				t.Errorf("Result.Builtin = %q, want [overlay]", res.Builtin)
			}
			if res.Size != int64(buf.Len()) {
				t.Errorf("Result.Size = %d, wrote %d", res.Size, buf.Len())
			}
			raw := run(t, buf.Bytes(), "", tc.cat[0], tc.cat[1:]...)
			if int64(len(raw)) != res.CPIOSize {
				t.Errorf("Result.CPIOSize = %d, decompressed %d", res.CPIOSize, len(raw))
			}
			// Owners and times as cpio lists them: root, the epoch.
			for line := range strings.Lines(string(run(t, raw, "", "cpio", "-itv", "--quiet"))) {
				f := strings.Fields(line)
				if len(f) < 9 || f[2] != "root" || f[3] != "root" {
					t.Errorf("entry not owned by root: %q", line)
				}
				if !strings.Contains(line, "1970") {
					t.Errorf("entry time is not the epoch: %q", line)
				}
			}
			out := t.TempDir()
			run(t, raw, out, "cpio", "-idm", "--quiet", "--no-absolute-filenames", "--nonmatching", "dev/*")
			kver := "6.12.0-synth"
			want := map[string]string{
				layout.Init:      "\x7fELF static init",
				layout.Config:    "config v1\n",
				layout.Policy:    "\x30\x82\x00\x01\x00",
				"/usr/bin/guest": "guest program",
				"/srv/data":      "data",
				"/lib/modules/" + kver + "/kernel/lib/crc16.ko":             string(plain["kernel/lib/crc16.ko"]),
				"/lib/modules/" + kver + "/kernel/fs/ext4/ext4.ko":          string(plain["kernel/fs/ext4/ext4.ko"]),
				"/lib/modules/" + kver + "/kernel/crypto/crc32c_generic.ko": string(plain["kernel/crypto/crc32c_generic.ko"]),
				"/lib/modules/" + kver + "/kernel/lib/libcrc32c.ko":         string(plain["kernel/lib/libcrc32c.ko"]),
				layout.ModuleList: "# cfsroot module load list: loaded in this order; \"optional\": may fail to load\n" +
					"/lib/modules/" + kver + "/kernel/lib/crc16.ko\n" +
					"/lib/modules/" + kver + "/kernel/fs/ext4/ext4.ko\n" +
					"/lib/modules/" + kver + "/kernel/crypto/crc32c_generic.ko optional\n" +
					"/lib/modules/" + kver + "/kernel/lib/libcrc32c.ko\n",
				"/lib/modules/" + kver + "/modules.dep": "kernel/lib/crc16.ko:\nkernel/fs/ext4/ext4.ko: kernel/lib/crc16.ko\n" +
					"kernel/crypto/crc32c_generic.ko:\nkernel/lib/libcrc32c.ko:\n",
			}
			certPEM, _ := os.ReadFile(s.Certs[0])
			want[layout.CertDir+"/signer.pem"] = string(certPEM)
			want[layout.FsverityCertDir+"/objects.pem"] = string(certPEM)
			for p, content := range want {
				got, err := os.ReadFile(filepath.Join(out, p))
				if err != nil {
					t.Errorf("%s: %v", p, err)
					continue
				}
				if string(got) != content {
					t.Errorf("%s = %q, want %q", p, got, content)
				}
			}
			for p, mode := range map[string]os.FileMode{layout.Init: 0o755, "/usr/bin/guest": 0o755, "/srv/data": 0o640, layout.Config: 0o644} {
				fi, err := os.Stat(filepath.Join(out, p))
				if err == nil && fi.Mode().Perm() != mode {
					t.Errorf("%s mode %v, want %v", p, fi.Mode().Perm(), mode)
				}
			}
			// The device nodes the kernel needs before devtmpfs.
			list := string(run(t, raw, "", "cpio", "-itv", "--quiet", "dev/console"))
			if !strings.HasPrefix(list, "crw-------") || !strings.Contains(list, "5,") {
				t.Errorf("dev/console entry = %q, want a char device 5,1", list)
			}
		})
	}
}

func TestBuildReproducible(t *testing.T) {
	s, _ := inputs(t)
	for _, comp := range []Compression{Gzip, Zstd} {
		s.Compression = comp
		var a, b bytes.Buffer
		if _, err := Build(&a, s); err != nil {
			t.Fatal(err)
		}
		// Different file times and access order on the host must not matter.
		later := time.Now().Add(time.Hour)
		for _, p := range append([]string{s.Init, s.Config, s.Policy}, s.Certs...) {
			if err := os.Chtimes(p, later, later); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := Build(&b, s); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(a.Bytes(), b.Bytes()) {
			t.Errorf("%s: two builds of the same inputs differ", comp)
		}
		s2 := s
		s2.ModTime = 1700000000
		var c bytes.Buffer
		if _, err := Build(&c, s2); err != nil {
			t.Fatal(err)
		}
		if bytes.Equal(a.Bytes(), c.Bytes()) {
			t.Errorf("%s: ModTime does not reach the archive", comp)
		}
	}
}

func TestBuildErrors(t *testing.T) {
	s, _ := inputs(t)
	dir := t.TempDir()
	notCert := writeFile(t, filepath.Join(dir, "bad.pem"), []byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"), 0o644)
	pemPolicy := writeFile(t, filepath.Join(dir, "policy.pem"), []byte("-----BEGIN PKCS7-----\n"), 0o644)
	for _, tc := range []struct {
		name string
		edit func(*Spec)
		err  string
	}{
		{"no init", func(s *Spec) { s.Init = "" }, "no init binary"},
		{"missing init", func(s *Spec) { s.Init = filepath.Join(dir, "nope") }, "no such file"},
		{"bad cert", func(s *Spec) { s.Certs = []string{notCert} }, "certificate " + notCert},
		{"PEM policy", func(s *Spec) { s.Policy = pemPolicy }, "not DER PKCS#7"},
		{"relative destination", func(s *Spec) { s.Files = []File{{Src: s.Init, Dst: "bin/x"}} }, "clean absolute"},
		{"dotdot destination", func(s *Spec) { s.Files = []File{{Src: s.Init, Dst: "/bin/../x"}} }, "clean absolute"},
		{"collision", func(s *Spec) { s.Files = []File{{Src: s.Init, Dst: layout.Config}} }, "two files for " + layout.Config},
		{"file over directory", func(s *Spec) { s.Files = []File{{Src: s.Init, Dst: layout.CertDir}} }, "is a directory"},
		{"directory over file", func(s *Spec) { s.Files = []File{{Src: s.Init, Dst: layout.Init + "/x"}} }, "/init is a file"},
		{"mount point as file", func(s *Spec) { s.Files = []File{{Src: s.Init, Dst: "/proc"}} }, "/proc is a file"},
		{"console taken", func(s *Spec) { s.Files = []File{{Src: s.Init, Dst: "/dev/console"}} }, "reserved"},
		{"unknown module", func(s *Spec) { s.Modules = []string{"nosuch"} }, `no module "nosuch"`},
		{"modules without tree", func(s *Spec) { s.ModuleDir = "" }, "no module tree"},
		{"compression", func(s *Spec) { s.Compression = "lz4" }, "unknown compression"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := s
			s.Files = append([]File(nil), s.Files...)
			tc.edit(&s)
			_, err := Build(&bytes.Buffer{}, s)
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("error = %v, want one containing %q", err, tc.err)
			}
		})
	}
}

func TestWriteFileAtomic(t *testing.T) {
	s, _ := inputs(t)
	out := filepath.Join(t.TempDir(), "initrd.img")
	if err := os.WriteFile(out, []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	bad := s
	bad.Modules = []string{"nosuch"}
	if _, err := WriteFile(out, bad); err == nil {
		t.Fatal("WriteFile succeeded with an unknown module")
	}
	if got, _ := os.ReadFile(out); string(got) != "old" {
		t.Errorf("failed build changed the output to %q", got)
	}
	if ents, _ := os.ReadDir(filepath.Dir(out)); len(ents) != 1 {
		t.Errorf("failed build left files behind: %v", ents)
	}
	res, err := WriteFile(out, s)
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(out); err != nil || fi.Size() != res.Size {
		t.Errorf("stat %s: %v, size %v, want %d", out, err, fi, res.Size)
	}
}

// trixieModules returns the module tree of Debian trixie's kernel that
// tools/fetch-kernel.sh caches; when it is absent the test ends (testutil.Unavailable).
func trixieModules(tb testing.TB) string {
	return testutil.CachedKernel(tb)
}

// bootModules are the modules the boot chain loads (DESIGN §5).
var bootModules = []string{"ext4", "virtio_blk", "erofs", "overlay"}

// TestBuildTrixie builds with Debian's real .ko.xz modules twice and checks
// that the bytes are equal and each module is what xz -dc makes of it.
func TestBuildTrixie(t *testing.T) {
	need(t, "xz", "cpio", "zstd")
	root := trixieModules(t)
	s, _ := inputs(t)
	s.ModuleDir, s.Modules, s.Compression = root, bootModules, Zstd
	var a, b bytes.Buffer
	res, err := Build(&a, s)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Build(&b, s); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a.Bytes(), b.Bytes()) {
		t.Fatal("two builds of the same inputs differ")
	}
	var names []string
	for _, m := range res.Modules {
		names = append(names, m.Name)
	}
	t.Logf("modules: %v; %d bytes compressed, %d bytes cpio", names, res.Size, res.CPIOSize)
	out := t.TempDir()
	run(t, run(t, a.Bytes(), "", "zstd", "-dc"), out, "cpio", "-idm", "--quiet", "--no-absolute-filenames", "--nonmatching", "dev/*")
	modDir := filepath.Join(root, "lib", "modules", res.KernelVersion)
	for _, m := range res.Modules {
		want := run(t, nil, "", "xz", "-dc", filepath.Join(modDir, m.Path))
		got, err := os.ReadFile(filepath.Join(out, "lib", "modules", res.KernelVersion, strings.TrimSuffix(m.Path, ".xz")))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("module %s differs from xz -dc %s", m.Name, m.Path)
		}
	}
}

// BenchmarkBuildTrixie measures a build with the boot chain's modules
// (decompressing Debian's .ko.xz files is most of the work).
func BenchmarkBuildTrixie(b *testing.B) {
	root := trixieModules(b)
	dir := b.TempDir()
	init := filepath.Join(dir, "init")
	// A stand-in of the init's size: 5 MB of incompressible-ish data.
	data := make([]byte, 5<<20)
	rand.Read(data[:1<<20])
	if err := os.WriteFile(init, data, 0o755); err != nil {
		b.Fatal(err)
	}
	for _, comp := range []Compression{Gzip, Zstd} {
		b.Run(string(comp), func(b *testing.B) {
			var size int64
			for b.Loop() {
				res, err := Build(io.Discard, Spec{Init: init, ModuleDir: root, Modules: bootModules, Compression: comp})
				if err != nil {
					b.Fatal(err)
				}
				size = res.Size
			}
			b.ReportMetric(float64(size), "bytes")
		})
	}
}
