package boot

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
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
		*c.PCR != 15 || c.TPM != "required" || c.Upper != "none" || c.Init != "/sbin/init" || c.OnFailure != "halt" {
		t.Errorf("defaults: %+v", c)
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
		{`{"disk": "LABEL=x", "slots": ["a"], "repository": "../x"}`, "without .."},
		{`{"disk": "LABEL=x", "slots": ["a"], "pinned_digests": {"b": "sha256:00"}}`, `"b" is not a slot`},
		{`{"disk": "LABEL=x", "slots": ["a"], "pinned_digests": {"a": "sha256:00"}}`, "sha256 digest must be 32 bytes"},
		{`{"disk": "LABEL=x", "slots": ["a"], "pcr": 24}`, "pcr 24"},
		{`{"disk": "LABEL=x", "slots": ["a"], "tpm": "maybe"}`, `tpm "maybe"`},
		{`{"disk": "LABEL=x", "slots": ["a"], "ipe_enforce": true}`, "ipe_enforce needs an ipe_policy"},
		{`{"disk": "LABEL=x", "slots": ["a"], "ipe_policy": "policy.p7s"}`, "absolute path"},
		{`{"disk": "LABEL=x", "slots": ["a"], "upper": "disk"}`, "want none, tmpfs or DISK:DIR"},
		{`{"disk": "LABEL=x", "slots": ["a"], "init": "sbin/init"}`, "absolute path"},
		{`{"disk": "LABEL=x", "slots": ["a"], "on_failure": "shell"}`, "needs allow_shell"},
		{`{"disk": "LABEL=x", "slots": ["a"], "disk_timeout": 5}`, "duration must be a string"},
		{`not json`, "invalid character"},
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
