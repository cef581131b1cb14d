package boot

import (
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/cfsroot/cfsroot/internal/strictjson"
	"github.com/cfsroot/cfsroot/measure"
)

func writeConfig(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "config")
	if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLoadConfigDefaults(t *testing.T) {
	c, err := LoadConfig(writeConfig(t, `{"disk": "LABEL=cfsroot", "slots": ["a", "b"]}`))
	if err != nil {
		t.Fatal(err)
	}
	if c.TrustedCerts != "/etc/cfsroot/certs" || c.DiskFSType != "ext4" || c.Repository != "composefs" ||
		*c.PCR != 15 || c.TPM != "required" || c.Upper != "none" || c.Init != "/sbin/init" || c.OnFailure != "halt" ||
		c.MinVersion != 0 || c.Product != "" || c.RollbackNV != "off" || c.NVIndex() != 0x0180cf50 || c.RollbackMeasured() ||
		c.RAMCopyMaxMiB != 256 {
		t.Errorf("defaults: %+v", c)
	}
}

// TestLoadConfigRollback: the anti-rollback keys are read and turn on the
// version and floor measurements.
func TestLoadConfigRollback(t *testing.T) {
	c, err := LoadConfig(writeConfig(t, `{"disk": "LABEL=cfsroot", "slots": ["a"], "min_version": 4, "product": "appliance",
		"rollback_nv": "required", "rollback_nv_index": "0x01800001"}`))
	if err != nil {
		t.Fatal(err)
	}
	if c.MinVersion != 4 || c.Product != "appliance" || c.RollbackNV != "required" || c.NVIndex() != 0x01800001 || !c.RollbackMeasured() {
		t.Errorf("config: %+v, index %#x", c, c.NVIndex())
	}
}

func TestLoadConfigErrors(t *testing.T) {
	for _, tc := range []struct {
		body, want string
	}{
		{`{"disk": "LABEL=x", "slots": ["a"], "verify": false}`, `unknown field "verify"`},
		{`{"slots": ["a"]}`, "disk is required"},
		{`{"disk": "sda", "slots": ["a"]}`, `disk "sda": want LABEL=`},
		{`{"disk": "LABEL=x"}`, "at least one image"},
		{`{"disk": "LABEL=x", "slots": ["../etc"]}`, "must not contain /"},
		{`{"disk": "LABEL=x", "slots": ["a", "a"]}`, "listed twice"},
		{`{"disk": "LABEL=x", "slots": ["a b"]}`, `name "a b" has ' '`},
		{`{"disk": "LABEL=x", "slots": ["a"], "repository": "../x"}`, "without .."},
		{`{"disk": "LABEL=x", "slots": ["a"], "pinned_digests": {"b": "sha256:00"}}`, `"b" is not a slot`},
		{`{"disk": "LABEL=x", "slots": ["a"], "pinned_digests": {"a": "sha256:00"}}`, "sha256 digest must be 32 bytes"},
		{`{"disk": "LABEL=x", "slots": ["a"], "pcr": 24}`, "PCR 24 is not between 0 and 23"},
		// Finding 8: PCRs any program can reset prove nothing.
		{`{"disk": "LABEL=x", "slots": ["a"], "pcr": 16}`, "PCR 16 can be reset by any program"},
		{`{"disk": "LABEL=x", "slots": ["a"], "pcr": 23}`, "PCR 23 can be reset by any program"},
		{`{"disk": "LABEL=x", "slots": ["a"], "pcr": 20}`, "PCR 20 belongs to dynamic launch"},
		{`{"disk": "LABEL=x", "slots": ["a"], "pcr": -1}`, "PCR -1 is not between"},
		{`{"disk": "LABEL=x", "slots": ["a"], "tpm": "maybe"}`, `tpm "maybe"`},
		{`{"disk": "LABEL=x", "slots": ["a"], "ipe_enforce": true}`, "ipe_enforce needs an ipe_policy"},
		{`{"disk": "LABEL=x", "slots": ["a"], "ipe_policy": "policy.p7s"}`, "absolute path"},
		{`{"disk": "LABEL=x", "slots": ["a"], "fsverity_certs": "certs"}`, "fsverity_certs \"certs\": want an absolute path"},
		{`{"disk": "LABEL=x", "slots": ["a"], "upper": "disk"}`, "want none, tmpfs or DISK:DIR"},
		{`{"disk": "LABEL=x", "slots": ["a"], "ram_copy_max_mib": -1}`, "ram_copy_max_mib -1 is not between 1 and 1048576"},
		{`{"disk": "LABEL=x", "slots": ["a"], "ram_copy_max_mib": 1048577}`, "ram_copy_max_mib 1048577"},
		{`{"disk": "LABEL=x", "slots": ["a"], "init": "sbin/init"}`, "absolute path"},
		{`{"disk": "LABEL=x", "slots": ["a"], "on_failure": "shell"}`, "needs allow_shell"},
		{`{"disk": "LABEL=x", "slots": ["a"], "disk_timeout": 5}`, "duration must be a string"},
		{`{"disk": "LABEL=x", "slots": ["a"], "product": "a/b"}`, "product: product name"},
		{`{"disk": "LABEL=x", "slots": ["a"], "rollback_nv": "yes"}`, `rollback_nv "yes": want off, required or optional`},
		{`{"disk": "LABEL=x", "slots": ["a"], "rollback_nv_index": "0x81000001"}`, `rollback_nv_index "0x81000001"`},
		{`{"disk": "LABEL=x", "slots": ["a"], "rollback_nv_index": "25218896"}`, `rollback_nv_index "25218896"`},
		{`{"disk": "LABEL=x", "slots": ["a"], "min_version": -1}`, "min_version"},
		{`{"disk": "LABEL=x", "slots": ["a"], "nvIndex": 1}`, `unknown field "nvIndex"`},
		{`not json`, "invalid character"},
		// Finding 7: encoding/json matches keys case-insensitively and
		// lets the last duplicate win; both are refused.
		{`{"disk": "LABEL=x", "slots": ["a"], "tpm": "required", "TPM": "optional"}`, `key "TPM" must be written "tpm"`},
		{`{"disk": "LABEL=x", "slots": ["a"], "Tpm": "optional"}`, `key "Tpm" must be written "tpm"`},
		{`{"disk": "LABEL=x", "slots": ["a"], "tpm": "required", "tpm": "optional"}`, `key "tpm" given twice`},
		{`{"disk": "LABEL=x", "slots": ["a", "b"], "pinned_digests": {"a": "sha256:00", "a": "sha256:11"}}`, `key "pinned_digests.a" given twice`},
		{`{"disk": "LABEL=x", "slots": ["a"]} {"tpm": "optional"}`, "more than one JSON value"},
	} {
		_, err := LoadConfig(writeConfig(t, tc.body))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v, want %q", tc.body, err, tc.want)
		}
	}
}

func TestParseCmdline(t *testing.T) {
	cfg := &Config{Slots: []string{"a", "b", "c"}, Fallback: true}
	noFallback := &Config{Slots: []string{"a", "b"}}
	signed := &Config{Slots: []string{"a", "b"}, CmdlineSigned: true}
	digest := "sha256:" + strings.Repeat("ab", 32)
	for _, tc := range []struct {
		name    string
		cfg     *Config
		cmdline string
		slots   string
		debug   bool
		wantErr string
	}{
		{"none", cfg, "console=ttyS0 quiet", "a,b,c", false, ""},
		{"image first", cfg, "cfsroot.image=b", "b,a,c", false, ""},
		{"no fallback", noFallback, "ro", "a", false, ""},
		{"no fallback image", noFallback, "cfsroot.image=b", "b", false, ""},
		{"debug", cfg, `foo="bar baz" cfsroot.debug`, "a,b,c", true, ""},
		{"after --", cfg, "-- cfsroot.verify=0", "a,b,c", false, ""},
		{"unknown key", cfg, "cfsroot.verify=0", "", false, "unknown key cfsroot.verify"},
		{"dotdot", cfg, "cfsroot.image=../x", "", false, `contains ".."`},
		{"not a slot", cfg, "cfsroot.image=z", "", false, "not one of the configured slots"},
		{"empty image", cfg, "cfsroot.image=", "", false, "needs a value"},
		{"digest unsigned", cfg, "cfsroot.digest=" + digest, "", false, "only accepted when"},
		{"digest signed", signed, "cfsroot.digest=" + digest, "a", false, ""},
		{"bad digest", signed, "cfsroot.digest=sha256:zz", "", false, "not hex"},
		{"disk unsigned", cfg, "cfsroot.disk=LABEL=evil", "", false, "only accepted when"},
		{"debug value", cfg, "cfsroot.debug=yes", "", false, "takes no value"},
		// Finding 7: a repeated key used to be last-wins, so an appended
		// cfsroot.image= picked another slot.
		{"image twice", cfg, "cfsroot.image=a cfsroot.image=b", "", false, "cfsroot.image given twice"},
		{"debug twice", cfg, "cfsroot.debug cfsroot.debug=0", "", false, "given twice"},
		{"upper case prefix", cfg, "CFSROOT.image=b", "", false, "cfsroot keys are lower case"},
		{"upper case key", cfg, "cfsroot.Image=b", "", false, "unknown key cfsroot.Image"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ch, err := ParseCmdline(tc.cmdline, tc.cfg)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := strings.Join(ch.Slots, ","); got != tc.slots || ch.Debug != tc.debug {
				t.Errorf("slots %s debug %v, want %s %v", got, ch.Debug, tc.slots, tc.debug)
			}
		})
	}
}

func TestSplitCmdline(t *testing.T) {
	got := splitCmdline(` a  b="c d" "e f"g` + "\n")
	want := []string{"a", "b=c d", "e fg"}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("splitCmdline = %q, want %q", got, want)
	}
}

// FuzzLoadConfig: any config either loads with its checks applied or is
// refused; a loaded config never has a duplicate or wrongly cased key's
// value, never an unsafe PCR, and never panics the parser.
func FuzzLoadConfig(f *testing.F) {
	for _, s := range []string{
		`{"disk": "LABEL=cfsroot", "slots": ["a", "b"]}`,
		`{"disk": "LABEL=x", "slots": ["a"], "tpm": "required", "TPM": "optional"}`,
		`{"disk": "LABEL=x", "slots": ["a"], "tpm": "required", "tpm": "optional"}`,
		`{"disk": "LABEL=x", "slots": ["a"], "pcr": 23}`,
		`{"disk": "LABEL=x", "slots": ["a"], "pinned_digests": {"a": "sha256:00"}, "upper": "LABEL=d:u"}`,
		strings.Repeat("[", 10000) + strings.Repeat("]", 10000),
		`{"disk": "LABEL=x", "slots": [` + strings.Repeat(`"a",`, 5000) + `"b"]}`,
		`{"a":` + strings.Repeat(`{"a":`, 3000) + "1" + strings.Repeat("}", 3001),
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := ParseConfig(data)
		if err != nil {
			return
		}
		if err := strictjson.CheckKeys(data, strictjson.Fields(reflect.TypeFor[Config]())); err != nil {
			t.Fatalf("loaded a config that fails the key check: %v", err)
		}
		if c.PCR == nil || measure.CheckBootPCR(*c.PCR) != nil {
			t.Fatalf("loaded with pcr %v", c.PCR)
		}
		if len(c.Slots) == 0 || c.Disk == "" {
			t.Fatalf("loaded without slots or disk: %+v", c)
		}
	})
}

// FuzzParseCmdline: a command line either fails or picks slots among the
// config's, without a repeated key, and never pins a digest or disk
// unless the config says the command line is signed.
func FuzzParseCmdline(f *testing.F) {
	for _, s := range []string{
		"console=ttyS0 cfsroot.image=b cfsroot.debug",
		"cfsroot.image=a cfsroot.image=b",
		"CFSROOT.image=b",
		`cfsroot.image="b" -- cfsroot.image=a`,
		"cfsroot.digest=sha256:" + strings.Repeat("ab", 32),
		"cfsroot.disk=LABEL=evil",
		strings.Repeat("cfsroot.debug=0 ", 1000),
		strings.Repeat(`"`, 1001),
	} {
		f.Add(s, false)
		f.Add(s, true)
	}
	f.Fuzz(func(t *testing.T, cmdline string, signed bool) {
		cfg := &Config{Slots: []string{"a", "b", "c"}, Fallback: true, CmdlineSigned: signed}
		ch, err := ParseCmdline(cmdline, cfg)
		if err != nil {
			return
		}
		seen := map[string]bool{}
		for _, s := range ch.Slots {
			if !slices.Contains(cfg.Slots, s) || seen[s] {
				t.Fatalf("slots %v from %q", ch.Slots, cmdline)
			}
			seen[s] = true
		}
		if !signed && (ch.Digest != nil || ch.Disk != "") {
			t.Fatalf("unsigned command line %q pinned digest %v disk %q", cmdline, ch.Digest, ch.Disk)
		}
		n := 0
		for _, a := range splitCmdline(cmdline) {
			if a == "--" {
				break
			}
			if k, _, _ := strings.Cut(a, "="); k == "cfsroot.image" {
				n++
			}
		}
		if n > 1 {
			t.Fatalf("accepted %d cfsroot.image keys in %q", n, cmdline)
		}
	})
}
