package kernelcfg

import (
	"bytes"
	"compress/gzip"
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"

	"github.com/cfsroot/cfsroot/internal/testutil"
)

var update = flag.Bool("update", false, "rewrite cfsroot.config and README.md from the table")

// TestGenerated keeps the committed fragment and README equal to what the
// table generates, so neither can drift from the checker.
func TestGenerated(t *testing.T) {
	for _, f := range []struct {
		path string
		want []byte
	}{
		{"cfsroot.config", Fragment()},
		{"README.md", Markdown()},
	} {
		if *update {
			tmp := f.path + ".tmp"
			if err := os.WriteFile(tmp, f.want, 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.Rename(tmp, f.path); err != nil {
				t.Fatal(err)
			}
			continue
		}
		got, err := os.ReadFile(f.path)
		if err != nil {
			t.Fatalf("%v (generate it with: go test ./kernelcfg -run TestGenerated -update)", err)
		}
		if !bytes.Equal(got, f.want) {
			t.Errorf("%s is out of date with table.go; regenerate with: go test ./kernelcfg -run TestGenerated -update", f.path)
		}
	}
}

// TestFragmentParses checks that the fragment is valid config syntax, holds
// every required option of the first alternative and no optional one.
func TestFragmentParses(t *testing.T) {
	c, err := Parse(bytes.NewReader(Fragment()))
	if err != nil {
		t.Fatalf("fragment does not parse: %v", err)
	}
	for _, req := range table {
		for i, o := range req.AnyOf {
			_, in := c.Values[o.Name]
			switch {
			case req.Level == Optional && in && !isDep(o.Name):
				t.Errorf("optional %s is in the fragment", o.Name)
			case req.Level != Optional && i == 0 && !in:
				t.Errorf("%s (%s) is not in the fragment", o.Name, req.Level)
			}
		}
	}
	// A kernel configured with just the fragment (and a release header)
	// meets every required and recommended requirement.
	c.Version = Version{6, 12, 0}
	rep := Check(c, CheckOptions{})
	for _, l := range []Level{Required, Recommended} {
		for _, m := range rep.Missing(l) {
			t.Errorf("fragment misses %s %s: %s", l, m.ID, m.Detail)
		}
	}
}

func isDep(name string) bool {
	for _, req := range table {
		for _, o := range req.AnyOf {
			for _, d := range o.Deps {
				if d == name {
					return true
				}
			}
		}
	}
	return false
}

func TestTableWellFormed(t *testing.T) {
	ids := map[string]bool{}
	for _, req := range table {
		if req.ID == "" || ids[req.ID] {
			t.Errorf("empty or duplicate ID %q", req.ID)
		}
		ids[req.ID] = true
		if (req.MinKernel == "") == (len(req.AnyOf) == 0) {
			t.Errorf("%s: needs exactly one of MinKernel and AnyOf", req.ID)
		}
		if req.MinKernel != "" {
			if _, err := ParseVersion(req.MinKernel); err != nil {
				t.Errorf("%s: %v", req.ID, err)
			}
		}
		if req.Why == "" || req.Section == "" {
			t.Errorf("%s: missing Why or Section", req.ID)
		}
		for _, o := range req.AnyOf {
			if o.Since != "" {
				if _, err := ParseVersion(o.Since); err != nil {
					t.Errorf("%s: %v", o.Name, err)
				}
			}
			if (o.Build == ModuleOK) != (o.Module != "") {
				t.Errorf("%s: Module must be set exactly for ModuleOK options", o.Name)
			}
			if strings.HasPrefix(o.Name, "CONFIG_") {
				t.Errorf("%s: name must omit CONFIG_", o.Name)
			}
		}
	}
}

const header = "#\n# Automatically generated file; DO NOT EDIT.\n# Linux/x86 6.12.1 Kernel Configuration\n#\n"

func TestParse(t *testing.T) {
	gz := func(s string) []byte {
		var b bytes.Buffer
		w := gzip.NewWriter(&b)
		w.Write([]byte(s))
		w.Close()
		return b.Bytes()
	}
	good := header + "CONFIG_A=y\r\nCONFIG_B=m\n# CONFIG_C is not set\nCONFIG_S=\"x,\\\"y\\\"\"\nCONFIG_N=16\n\n# a comment\n"
	wantVals := map[string]string{"A": "y", "B": "m", "C": "n", "S": `x,"y"`, "N": "16"}
	for _, tc := range []struct {
		name    string
		in      []byte
		wantErr string
	}{
		{"text", []byte(good), ""},
		{"gzip", gz(good), ""},
		{"empty", nil, "no CONFIG_ lines"},
		{"only comments", []byte("# hello\n"), "no CONFIG_ lines"},
		{"prose", []byte("CONFIG_A=y\nhello world\n"), "line 2 is not CONFIG_NAME=VALUE"},
		{"binary", []byte("CONFIG_A=y\x00\x01\x02"), "NUL bytes"},
		{"bad quote", []byte("CONFIG_S=\"abc\n"), "badly quoted"},
		{"xz", []byte{0xfd, '7', 'z', 'X', 'Z', 0, 1, 2}, "xz-compressed"},
		{"zstd", []byte{0x28, 0xb5, 0x2f, 0xfd, 0}, "zstd-compressed"},
		{"truncated gzip", gz(good)[:30], "unexpected EOF"},
		{"gzipped garbage", gz("\x7fELF\x02\x01 not a config"), "line 1 is not CONFIG_NAME=VALUE"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Parse(bytes.NewReader(tc.in))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want it to contain %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(c.Values, wantVals) {
				t.Errorf("values = %v, want %v", c.Values, wantVals)
			}
			if c.Version != (Version{6, 12, 1}) {
				t.Errorf("version = %v, want 6.12.1", c.Version)
			}
		})
	}
}

func TestParseVersion(t *testing.T) {
	for in, want := range map[string]Version{
		"6.12": {6, 12, 0}, "6.12.117+deb13-amd64": {6, 12, 117}, "6.1.0-50-amd64": {6, 1, 0}, "5.4": {5, 4, 0},
	} {
		if got, err := ParseVersion(in); err != nil || got != want {
			t.Errorf("ParseVersion(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "six", "6", "0.0", "v6.12"} {
		if _, err := ParseVersion(in); err == nil {
			t.Errorf("ParseVersion(%q) succeeded", in)
		}
	}
	if !(Version{6, 6, 0}).Less(Version{6, 12, 0}) || (Version{6, 12, 9}).Less(Version{6, 12, 0}) {
		t.Error("Less compares wrongly")
	}
}

// minimal is a synthetic config meeting every required requirement.
var minimal = map[string]string{
	"BLK_DEV_INITRD": "y", "RD_GZIP": "y", "DEVTMPFS": "y", "PROC_FS": "y", "SYSFS": "y", "TMPFS": "y",
	"FS_VERITY": "y", "EXT4_FS": "m", "EROFS_FS": "m", "EROFS_FS_XATTR": "y", "EROFS_FS_BACKED_BY_FILE": "y",
	"OVERLAY_FS": "m", "SECURITY_IPE": "y", "LSM": "lockdown,ipe", "SECURITYFS": "y", "IPE_PROP_FS_VERITY": "y",
	"SYSTEM_TRUSTED_KEYRING": "y", "TCG_TPM": "y", "TCG_CRB": "y",
}

func TestCheck(t *testing.T) {
	v612 := Version{6, 12, 0}
	for _, tc := range []struct {
		name    string
		change  map[string]string // "" deletes
		version Version
		opt     CheckOptions
		missing []string // required IDs missing
		detail  string   // substring of the first missing detail
		modules []string
	}{
		{name: "minimal", version: v612, modules: []string{"erofs", "ext4", "overlay"}},
		{name: "no ipe", version: v612, change: map[string]string{"SECURITY_IPE": "n"},
			missing: []string{"ipe"}, detail: "CONFIG_SECURITY_IPE is not set"},
		{name: "ipe absent, old kernel", version: Version{6, 11, 0},
			change:  map[string]string{"SECURITY_IPE": "", "IPE_PROP_FS_VERITY": ""},
			missing: []string{"ipe", "ipe-fs-verity"}, detail: "first in Linux 6.12; this kernel is 6.11"},
		{name: "fs-verity as module", version: v612, change: map[string]string{"FS_VERITY": "m"},
			missing: []string{"fs-verity"}, detail: "must be built in (y)"},
		{name: "loop fallback", version: v612,
			change:  map[string]string{"EROFS_FS_BACKED_BY_FILE": "n", "BLK_DEV_LOOP": "m"},
			modules: []string{"erofs", "ext4", "loop", "overlay"}},
		{name: "no erofs source", version: v612, change: map[string]string{"EROFS_FS_BACKED_BY_FILE": ""},
			missing: []string{"erofs-source"}, detail: "CONFIG_EROFS_FS_BACKED_BY_FILE is not in this config"},
		{name: "btrfs instead of ext4", version: v612, change: map[string]string{"EXT4_FS": "n", "BTRFS_FS": "y"},
			modules: []string{"erofs", "overlay"}},
		{name: "no backing fs", version: v612, change: map[string]string{"EXT4_FS": "n"},
			missing: []string{"backing-fs"}, detail: "CONFIG_EXT4_FS is not set; CONFIG_F2FS_FS is not in this config"},
		{name: "ipe not in LSM", version: v612, change: map[string]string{"LSM": "lockdown,yama"},
			missing: []string{"ipe-lsm"}, detail: `lacks ipe (add it, or boot with lsm=lockdown,yama,ipe)`},
		{name: "lsm= adds ipe", version: v612, change: map[string]string{"LSM": "lockdown"},
			opt: CheckOptions{Cmdline: "console=ttyS0 lsm=lockdown,ipe quiet"}, modules: []string{"erofs", "ext4", "overlay"}},
		{name: "lsm= drops ipe", version: v612, opt: CheckOptions{Cmdline: "lsm=ipe lsm=lockdown"},
			missing: []string{"ipe-lsm"}, detail: "lsm=lockdown on the command line replaces CONFIG_LSM and lacks ipe"},
		{name: "lsm= after -- is for init", version: v612, opt: CheckOptions{Cmdline: "ro -- lsm=lockdown"},
			modules: []string{"erofs", "ext4", "overlay"}},
		{name: "6.5 lacks verity=", version: Version{6, 5, 3},
			missing: []string{"overlay-verity"}, detail: "needs Linux 6.6 or later; this kernel is 6.5.3"},
		{name: "version unknown", missing: []string{"overlay-data-only-layers", "overlay-verity"},
			detail: "kernel version is unknown"},
		{name: "version given", opt: CheckOptions{Version: v612}, modules: []string{"erofs", "ext4", "overlay"}},
		{name: "no TPM driver", version: v612, change: map[string]string{"TCG_CRB": "n"},
			missing: []string{"tpm-driver"}, detail: "CONFIG_TCG_TIS is not in this config; CONFIG_TCG_CRB is not set"},
		{name: "TPM as modules", version: v612, change: map[string]string{"TCG_TPM": "m", "TCG_CRB": "", "TCG_TIS": "m"},
			modules: []string{"erofs", "ext4", "overlay", "tpm", "tpm_tis"}},
		{name: "odd value", version: v612, change: map[string]string{"DEVTMPFS": "yes"},
			missing: []string{"devtmpfs"}, detail: `CONFIG_DEVTMPFS="yes", want y`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := &Config{Values: map[string]string{}, Version: tc.version}
			for k, v := range minimal {
				c.Values[k] = v
			}
			for k, v := range tc.change {
				if v == "" {
					delete(c.Values, k)
				} else {
					c.Values[k] = v
				}
			}
			rep := Check(c, tc.opt)
			var ids []string
			for _, m := range rep.Missing(Required) {
				ids = append(ids, m.ID)
			}
			if !reflect.DeepEqual(ids, tc.missing) {
				t.Fatalf("missing required = %v, want %v", ids, tc.missing)
			}
			if rep.OK() != (len(tc.missing) == 0) {
				t.Errorf("OK() = %v", rep.OK())
			}
			if tc.detail != "" {
				if d := rep.Missing(Required)[0].Detail; !strings.Contains(d, tc.detail) {
					t.Errorf("detail = %q, want it to contain %q", d, tc.detail)
				}
			}
			if tc.missing == nil && !reflect.DeepEqual(rep.Modules(), tc.modules) {
				t.Errorf("modules = %v, want %v", rep.Modules(), tc.modules)
			}
		})
	}
}

// debianConfig returns Debian SUITE's kernel config and module tree,
// fetched by tools/fetch-kernel.sh (a no-op when cached).
func debianConfig(t *testing.T, suite string) (*Config, string) {
	dir := testutil.DebianKernel(t, suite)
	c, err := ReadFile(filepath.Join(dir, "config"))
	if err != nil {
		t.Fatal(err)
	}
	return c, dir
}

func TestDebianTrixie(t *testing.T) {
	c, dir := debianConfig(t, "trixie")
	if c.Version.Major != 6 || c.Version.Minor != 12 {
		t.Fatalf("trixie config is Linux %v, want 6.12", c.Version)
	}
	rep := Check(c, CheckOptions{})
	for _, l := range []Level{Required, Recommended, Optional} {
		for _, m := range rep.Missing(l) {
			t.Errorf("trixie misses %s %s: %s", l, m.ID, m.Detail)
		}
	}
	want := []string{"erofs", "ext4", "overlay", "virtio_blk"}
	if got := rep.Modules(); !reflect.DeepEqual(got, want) {
		t.Errorf("modules = %v, want %v", got, want)
	}
	// Every module name in the table that Debian builds as m is a real
	// module file in Debian's package.
	for _, req := range table {
		for _, o := range req.AnyOf {
			if o.Module == "" || c.Values[o.Name] != "m" {
				continue
			}
			matches, _ := filepath.Glob(filepath.Join(dir, "lib", "modules", "*", "kernel", "*", "*", o.Module+".ko*"))
			more, _ := filepath.Glob(filepath.Join(dir, "lib", "modules", "*", "kernel", "*", "*", "*", o.Module+".ko*"))
			if len(matches)+len(more) == 0 {
				t.Errorf("%s=m but no module %s.ko* in %s", o.Name, o.Module, dir)
			}
		}
	}
}

func TestDebianBookworm(t *testing.T) {
	c, _ := debianConfig(t, "bookworm")
	if c.Version.Major != 6 || c.Version.Minor != 1 {
		t.Fatalf("bookworm config is Linux %v, want 6.1", c.Version)
	}
	rep := Check(c, CheckOptions{})
	ids := func(l Level) []string {
		var out []string
		for _, m := range rep.Missing(l) {
			out = append(out, m.ID)
		}
		sort.Strings(out)
		return out
	}
	if got, want := ids(Required), []string{"ipe", "ipe-fs-verity", "ipe-lsm", "overlay-data-only-layers", "overlay-verity"}; !reflect.DeepEqual(got, want) {
		t.Errorf("bookworm misses required %v, want %v", got, want)
	}
	if got, want := ids(Recommended), []string{"ipe-policy-keyring"}; !reflect.DeepEqual(got, want) {
		t.Errorf("bookworm misses recommended %v, want %v", got, want)
	}
	if rep.OK() {
		t.Error("bookworm passes")
	}
	for _, res := range rep.Results {
		if res.ID == "erofs-source" && (!res.OK || !strings.Contains(res.Detail, "BLK_DEV_LOOP=m")) {
			t.Errorf("erofs-source on bookworm: ok=%v %s; want the loop fallback", res.OK, res.Detail)
		}
	}
}

// TestNamesAndVersionsAgainstDebian checks the table's option names and
// Since versions against real configs: every name is a symbol Debian's 6.12
// config knows, options first in a release after 6.1 are unknown to
// bookworm's 6.1 config, and older ones are known to it.
func TestNamesAndVersionsAgainstDebian(t *testing.T) {
	trixie, _ := debianConfig(t, "trixie")
	bookworm, _ := debianConfig(t, "bookworm")
	// Symbols hidden by a dependency these x86 Debian configs turn off.
	hidden := map[string]string{
		"TCG_FTPM_TEE":      "depends on OPTEE, which x86 Debian does not build",
		"MODULE_DECOMPRESS": "bookworm builds uncompressed modules (MODULE_COMPRESS_NONE), which hides it",
	}
	v61 := Version{6, 1, 0}
	for _, req := range table {
		for _, o := range req.AnyOf {
			for _, name := range append([]string{o.Name}, o.Deps...) {
				if _, ok := trixie.Values[name]; !ok && hidden[name] == "" {
					t.Errorf("%s is not a symbol in Debian's 6.12 config", name)
				}
			}
			_, inBookworm := bookworm.Values[o.Name]
			since := Version{}
			if o.Since != "" {
				since, _ = ParseVersion(o.Since)
			}
			if v61.Less(since) && inBookworm {
				t.Errorf("%s: Since %s, but bookworm's 6.1 has it", o.Name, o.Since)
			}
			if !v61.Less(since) && !inBookworm && hidden[o.Name] == "" {
				t.Errorf("%s: Since %q, but bookworm's 6.1 config lacks it", o.Name, o.Since)
			}
		}
	}
}
