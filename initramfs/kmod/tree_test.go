package kmod

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/cfsroot/cfsroot/internal/testutil"
)

// writeTree makes a module directory with the given index files.
func writeTree(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "lib", "modules", "6.12.0-test")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

const synthDep = `kernel/fs/ext4/ext4.ko.xz: kernel/lib/crc16.ko.xz kernel/fs/mbcache.ko.xz kernel/fs/jbd2/jbd2.ko.xz
kernel/fs/jbd2/jbd2.ko.xz:
kernel/fs/mbcache.ko.xz:
kernel/lib/crc16.ko.xz:
kernel/lib/libcrc32c.ko.xz:
kernel/fs/erofs/erofs.ko.xz: kernel/lib/libcrc32c.ko.xz
kernel/arch/x86/crypto/crc32c-intel.ko.xz:
kernel/crypto/crc32c_generic.ko.xz:
kernel/fs/a.ko: kernel/fs/b.ko
kernel/fs/b.ko:
kernel/fs/c.ko:
`

const synthSoftdep = `# Soft dependencies extracted from modules themselves.
softdep ext4 pre: crypto-crc32c
softdep libcrc32c pre: crc32c
softdep a post: c
softdep c pre: a
softdep b gcm
softdep erofs pre: nonexistent
`

const synthAlias = `alias crypto-crc32c crc32c_intel
alias crypto-crc32c crc32c_generic
alias crc32c crc32c_intel
alias crc32c crc32c_generic
alias fs-ext4 ext4
alias pci:v00001AF4d*sv*sd*bc*sc*i* virtio_pci_fake
`

func TestResolve(t *testing.T) {
	dir := writeTree(t, map[string]string{
		"modules.dep":     synthDep,
		"modules.softdep": synthSoftdep,
		"modules.alias":   synthAlias,
		"modules.builtin": "kernel/fs/overlayfs/overlay.ko\nkernel/drivers/block/virtio_blk.ko\n",
	})
	tree, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if tree.Version != "6.12.0-test" {
		t.Errorf("Version = %q", tree.Version)
	}
	req := func(n, p string) Module { return Module{Name: n, Path: p} }
	opt := func(n, p string) Module { return Module{Name: n, Path: p, Optional: true} }
	intel := opt("crc32c_intel", "kernel/arch/x86/crypto/crc32c-intel.ko.xz")
	generic := opt("crc32c_generic", "kernel/crypto/crc32c_generic.ko.xz")
	for _, tc := range []struct {
		name  string
		wants []string
		out   []Module
	}{
		{"hard deps after soft pre-deps, deps walked backwards like modprobe", []string{"ext4"}, []Module{
			intel, generic,
			req("jbd2", "kernel/fs/jbd2/jbd2.ko.xz"),
			req("mbcache", "kernel/fs/mbcache.ko.xz"),
			req("crc16", "kernel/lib/crc16.ko.xz"),
			req("ext4", "kernel/fs/ext4/ext4.ko.xz"),
		}},
		{"soft dep of a dep, missing soft dep skipped", []string{"erofs"}, []Module{
			intel, generic,
			req("libcrc32c", "kernel/lib/libcrc32c.ko.xz"),
			req("erofs", "kernel/fs/erofs/erofs.ko.xz"),
		}},
		{"each module once", []string{"erofs", "ext4", "libcrc32c"}, []Module{
			intel, generic,
			req("libcrc32c", "kernel/lib/libcrc32c.ko.xz"),
			req("erofs", "kernel/fs/erofs/erofs.ko.xz"),
			req("jbd2", "kernel/fs/jbd2/jbd2.ko.xz"),
			req("mbcache", "kernel/fs/mbcache.ko.xz"),
			req("crc16", "kernel/lib/crc16.ko.xz"),
			req("ext4", "kernel/fs/ext4/ext4.ko.xz"),
		}},
		{"soft dep wanted outright becomes required", []string{"libcrc32c", "crc32c-generic"}, []Module{
			intel, req("crc32c_generic", "kernel/crypto/crc32c_generic.ko.xz"),
			req("libcrc32c", "kernel/lib/libcrc32c.ko.xz"),
		}},
		{"built-in modules skipped", []string{"overlay", "virtio_blk"}, nil},
		{"alias with one provider", []string{"fs-ext4"}, []Module{
			intel, generic,
			req("jbd2", "kernel/fs/jbd2/jbd2.ko.xz"),
			req("mbcache", "kernel/fs/mbcache.ko.xz"),
			req("crc16", "kernel/lib/crc16.ko.xz"),
			req("ext4", "kernel/fs/ext4/ext4.ko.xz"),
		}},
		{"soft cycle and post deps; names before pre: ignored", []string{"a"}, []Module{
			req("b", "kernel/fs/b.ko"),
			req("a", "kernel/fs/a.ko"),
			opt("c", "kernel/fs/c.ko"),
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := tree.Resolve(tc.wants...)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.out) {
				t.Errorf("Resolve(%q) =\n%v\nwant\n%v", tc.wants, got, tc.out)
			}
		})
	}
}

func TestResolveErrors(t *testing.T) {
	dir := writeTree(t, map[string]string{
		"modules.dep":   synthDep + "kernel/x.ko: kernel/missing.ko\n",
		"modules.alias": synthAlias,
	})
	tree, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		want string
		err  string
	}{
		{"nosuchmodule", `no module "nosuchmodule"`},
		{"crc32c", "served by several modules (crc32c_generic, crc32c_intel)"},
	} {
		_, err := tree.Resolve(tc.want)
		if err == nil || !strings.Contains(err.Error(), tc.err) {
			t.Errorf("Resolve(%q) error = %v, want one containing %q", tc.want, err, tc.err)
		}
	}
}

func TestOpenErrors(t *testing.T) {
	empty := t.TempDir()
	noDep := filepath.Join(t.TempDir(), "lib", "modules", "6.1.0")
	if err := os.MkdirAll(filepath.Join(noDep, "kernel"), 0o755); err != nil {
		t.Fatal(err)
	}
	two := t.TempDir()
	for _, v := range []string{"6.1.0", "6.12.0"} {
		if err := os.MkdirAll(filepath.Join(two, "lib", "modules", v), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		dir, err string
	}{
		{filepath.Join(empty, "missing"), "no such file"},
		{empty, "neither a module directory"},
		{filepath.Dir(filepath.Dir(filepath.Dir(noDep))), "run depmod"},
		{two, "several kernels (6.1.0, 6.12.0)"},
	} {
		_, err := Open(tc.dir)
		if err == nil || !strings.Contains(err.Error(), tc.err) {
			t.Errorf("Open(%s) error = %v, want one containing %q", tc.dir, err, tc.err)
		}
	}
}

func TestListRoundTrip(t *testing.T) {
	in := []Entry{
		{Path: "/lib/modules/6.12/kernel/arch/x86/crypto/crc32c-intel.ko", Optional: true},
		{Path: "/lib/modules/6.12/kernel/fs/ext4/ext4.ko"},
	}
	var b bytes.Buffer
	if err := WriteList(&b, in); err != nil {
		t.Fatal(err)
	}
	got, err := ParseList(&b)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, in) {
		t.Errorf("round trip = %v, want %v", got, in)
	}
	for _, bad := range []string{"relative.ko\n", "/a.ko required\n"} {
		if _, err := ParseList(strings.NewReader(bad)); err == nil {
			t.Errorf("ParseList(%q) succeeded", bad)
		}
	}
	if err := WriteList(&b, []Entry{{Path: "/a b.ko"}}); err == nil {
		t.Error("WriteList accepted a path with a space")
	}
}

// kernelTree returns Debian trixie's module tree that tools/fetch-kernel.sh
// caches; when it is absent the test ends (testutil.Unavailable).
func kernelTree(t *testing.T) string {
	return testutil.CachedKernel(t)
}

// TestResolveTrixieAgainstModprobe checks the order against kmod's own
// modprobe --show-depends on Debian's real module tree.
func TestResolveTrixieAgainstModprobe(t *testing.T) {
	root := kernelTree(t)
	modprobe, err := exec.LookPath("modprobe")
	if err != nil {
		modprobe = "/sbin/modprobe"
		if _, err := os.Stat(modprobe); err != nil {
			testutil.Unavailable(t, "modprobe (Debian package kmod) not installed: run make deps")
		}
	}
	tree, err := Open(root)
	if err != nil {
		t.Fatal(err)
	}
	wants := []string{"ext4", "virtio_blk", "erofs", "overlay"}
	var oracle []string
	seen := map[string]bool{}
	for _, w := range wants {
		out, err := exec.Command(modprobe, "--show-depends", "-d", root, "-S", tree.Version, w).Output()
		if err != nil {
			t.Fatalf("modprobe --show-depends %s: %v", w, err)
		}
		for line := range strings.Lines(string(out)) {
			f := strings.Fields(line)
			if len(f) < 2 || f[0] != "insmod" {
				t.Fatalf("unexpected modprobe line %q", line)
			}
			rel, err := filepath.Rel(tree.Dir, f[1])
			if err != nil {
				t.Fatal(err)
			}
			if !seen[rel] {
				seen[rel] = true
				oracle = append(oracle, rel)
			}
		}
	}
	got, err := tree.Resolve(wants...)
	if err != nil {
		t.Fatal(err)
	}
	var paths []string
	optional := map[string]bool{}
	for _, m := range got {
		paths = append(paths, m.Path)
		optional[m.Name] = m.Optional
	}
	if !reflect.DeepEqual(paths, oracle) {
		t.Errorf("Resolve order\n%s\nmodprobe order\n%s", strings.Join(paths, "\n"), strings.Join(oracle, "\n"))
	}
	// crc32c comes in only as libcrc32c's and ext4's soft dependency.
	for name, want := range map[string]bool{"crc32c_intel": true, "crc32c_generic": true, "libcrc32c": false, "ext4": false, "jbd2": false} {
		if o, ok := optional[name]; !ok || o != want {
			t.Errorf("%s: present %v, optional %v; want present, optional %v", name, ok, o, want)
		}
	}
}

func TestBadModulePaths(t *testing.T) {
	for _, dep := range []string{
		"../../../etc/passwd.ko:\n",
		"/abs/x.ko:\n",
		"kernel/a.ko: kernel/../../b.ko\n",
		"kernel/notamodule:\n",
	} {
		dir := writeTree(t, map[string]string{"modules.dep": dep})
		if _, err := Open(dir); err == nil || !strings.Contains(err.Error(), "not a clean relative .ko path") {
			t.Errorf("Open with modules.dep %q: %v, want a path error", dep, err)
		}
	}
	dir := writeTree(t, map[string]string{
		"modules.dep":     "kernel/a.ko:\nkernel/b.ko: kernel/a.ko\n",
		"modules.softdep": "softdep a pre: b\n",
	})
	tree, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tree.Resolve("a"); err == nil || !strings.Contains(err.Error(), "dependency cycle: a -> b -> a") {
		t.Errorf("soft dependency on a module that needs the first one: %v, want a cycle error", err)
	}
}

// FuzzResolve checks, for arbitrary index files, that Resolve does not
// panic and that whatever order it returns is valid: each module once,
// after all its hard dependencies, and required modules' dependencies
// required too.
func FuzzResolve(f *testing.F) {
	f.Add([]byte(synthDep), []byte(synthSoftdep), []byte(synthAlias), "ext4 erofs a")
	f.Add([]byte("a.ko: b.ko\nb.ko: a.ko\n"), []byte("softdep a post: b\n"), []byte{}, "a b")
	f.Fuzz(func(t *testing.T, dep, softdep, alias []byte, wants string) {
		tree := newTree("/lib/modules/fuzz")
		if tree.parseDep(dep, "modules.dep") != nil {
			return
		}
		_ = tree.parseSoftdep(softdep)
		_ = tree.parseAlias(alias)
		_ = tree.parseBuiltinModinfo(alias)
		mods, err := tree.Resolve(strings.Fields(wants)...)
		if err != nil {
			return
		}
		at := map[string]int{}
		for i, m := range mods {
			if _, dup := at[m.Name]; dup {
				t.Fatalf("%s listed twice: %v", m.Name, mods)
			}
			at[m.Name] = i
		}
		for i, m := range mods {
			for _, d := range tree.Deps(m.Name) {
				j, ok := at[d]
				if !ok || j > i {
					t.Fatalf("%s placed before (or without) its dependency %s: %v", m.Name, d, mods)
				}
				if !m.Optional && mods[j].Optional {
					t.Fatalf("required %s depends on optional %s: %v", m.Name, d, mods)
				}
			}
		}
	})
}

func FuzzParseList(f *testing.F) {
	f.Add("# c\n/lib/modules/x/a.ko\n/lib/modules/x/b.ko optional\n")
	f.Fuzz(func(t *testing.T, in string) {
		l, err := ParseList(strings.NewReader(in))
		if err != nil {
			return
		}
		var b bytes.Buffer
		if err := WriteList(&b, l); err != nil {
			t.Fatalf("WriteList of a parsed list: %v", err)
		}
		l2, err := ParseList(&b)
		if err != nil || !reflect.DeepEqual(l, l2) {
			t.Fatalf("round trip: %v, %v != %v", err, l2, l)
		}
	})
}
