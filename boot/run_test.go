package boot

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-tpm-tools/simulator"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/cfsroot/cfsroot/measure"
	"github.com/cfsroot/cfsroot/measure/eventlog"
	"github.com/cfsroot/cfsroot/rootfs/composefs"
	"github.com/cfsroot/cfsroot/rootfs/mount"
	"github.com/cfsroot/cfsroot/rootfs/signature"
	"github.com/cfsroot/cfsroot/rootfs/verity"
)

// This file runs Boot.Run on the host: the fixed paths live under a
// temporary directory, the TPM is go-tpm-tools' simulator, mounts are
// recorded (and the overlay is imitated by copying the layers into the new
// root), and the kernel's fs-verity digest is computed in software for
// files the test says have fs-verity. What only the kernel shows (EROFS,
// overlay verity=require, IPE, the real TPM, switch_root) is in vmtests.

// recordingMounter records every mount and imitates the overlay: it fills
// the target with the lower tree (the test's image content) and then the
// upper directory's files, as overlayfs would show them.
type recordingMounter struct {
	calls []string
	lower map[string]fakeFile // the image's files, by path without leading /
	fail  map[string]error    // "mount", "erofs", "overlay" → error to return
	hook  func(kind string)   // called before each mount (panics, for tests)
}

type fakeFile struct {
	data    string
	mode    os.FileMode
	symlink string
}

func (m *recordingMounter) record(kind, s string) error {
	m.calls = append(m.calls, kind+" "+s)
	if m.hook != nil {
		m.hook(kind)
	}
	return m.fail[kind]
}

func (m *recordingMounter) Mount(source, target, fstype string, flags uintptr, data string) error {
	return m.record("mount", fmt.Sprintf("%s %s %s %#x %q", source, filepath.Base(target), fstype, flags, data))
}

func (m *recordingMounter) Unmount(target string) error {
	return m.record("unmount", filepath.Base(target))
}

func (m *recordingMounter) EROFS(image, target string) (string, error) {
	return "", m.record("erofs", filepath.Base(target))
}

func (m *recordingMounter) Overlay(o mount.Overlay, target string) error {
	opts, err := o.Options()
	if err != nil {
		return err
	}
	if err := m.record("overlay", opts); err != nil {
		return err
	}
	for p, f := range m.lower {
		if err := writeFake(filepath.Join(target, p), f); err != nil {
			return err
		}
	}
	if o.Upper != "" {
		return os.CopyFS(target, os.DirFS(o.Upper))
	}
	return nil
}

func writeFake(p string, f fakeFile) error {
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	os.Remove(p)
	if f.symlink != "" {
		return os.Symlink(f.symlink, p)
	}
	return os.WriteFile(p, []byte(f.data), f.mode)
}

// hostEnv is a boot on the host: root holds the initramfs paths, the disk
// is DiskDir under root (the mounter records the mount, the files are
// already there).
type hostEnv struct {
	t       *testing.T
	root    string
	env     *Env
	mounter *recordingMounter
	tpm     transport.TPM // nil when the test says there is no TPM
	noVeri  map[string]bool
	key     crypto.Signer
	cert    *x509.Certificate
	console bytes.Buffer
	disks   []BlockDevice
	// configJSON and cmdline, for table cases whose setup computes them.
	configJSON, cmdline string
}

const testDiskLabel = "cfsroot-host"

var testInit = map[string]fakeFile{
	"sbin/init":               {symlink: "/usr/lib/systemd/systemd"},
	"usr/lib/systemd/systemd": {data: "#!/bin/true\n", mode: 0o755},
}

func newHostEnv(t *testing.T) *hostEnv {
	t.Helper()
	h := &hostEnv{t: t, root: t.TempDir(), noVeri: map[string]bool{}}
	h.mounter = &recordingMounter{lower: testInit, fail: map[string]error{}}
	h.key, h.cert = testKey(t, "cfsroot host test")
	h.disks = []BlockDevice{{Path: "/dev/vda", Label: testDiskLabel, UUID: "0b5e0b5e-0000-4000-8000-000000000001"}}
	h.writeCert("etc/cfsroot/certs/trusted.pem", h.cert)
	h.env = &Env{
		Root: h.root,
		FindDisk: func(ctx context.Context, sel DiskSelector, timeout time.Duration) (BlockDevice, error) {
			for _, d := range h.disks {
				if d.matches(sel) {
					return d, nil
				}
			}
			return BlockDevice{}, fmt.Errorf("no block device with %s after %v", sel, timeout)
		},
		Mounter: h.mounter,
		OpenTPM: func(ctx context.Context) (*measure.Measurer, error) {
			if h.tpm == nil {
				return nil, fmt.Errorf("measure: %w", measure.ErrNoTPM)
			}
			return measure.New(ctx, h.tpm)
		},
		IPEDir: filepath.Join(h.root, "sys/kernel/security/ipe"),
		Digest: func(f *os.File) (verity.Digest, error) {
			if h.noVeri[filepath.Base(f.Name())] {
				return verity.Digest{}, fmt.Errorf("measure %s: %w", f.Name(), verity.ErrNotEnabled)
			}
			return verity.DigestReader(f, verity.Params{})
		},
	}
	return h
}

// withTPM starts the TPM simulator (one at a time: it is global).
func (h *hostEnv) withTPM() {
	sim, err := simulator.Get()
	if err != nil {
		h.t.Fatalf("TPM simulator: %v", err)
	}
	h.t.Cleanup(func() { sim.Close() })
	h.tpm = transport.FromReadWriter(sim)
}

func testKey(t *testing.T, cn string) (crypto.Signer, *x509.Certificate) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Unix(0, 0),
		NotAfter:     time.Unix(1<<32, 0),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return key, cert
}

func (h *hostEnv) writeCert(rel string, c *x509.Certificate) {
	h.write(rel, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw}), 0o644)
}

func (h *hostEnv) write(rel string, data []byte, mode os.FileMode) string {
	h.t.Helper()
	p := filepath.Join(h.root, rel)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		h.t.Fatal(err)
	}
	if err := os.WriteFile(p, data, mode); err != nil {
		h.t.Fatal(err)
	}
	return p
}

// imagesDir is the repository's images directory on the (pre-populated)
// disk.
func (h *hostEnv) imagePath(name string) string {
	return filepath.Join(h.root, DiskDir, "composefs/images", name+".cfs")
}

// testImageBytes is a real composefs image holding the test init.
func testImageBytes(t *testing.T, tag string) []byte {
	t.Helper()
	root := composefs.NewNode(composefs.ModeDir | 0o755)
	add := func(dir *composefs.Node, name string, n *composefs.Node) *composefs.Node {
		if err := dir.Add(name, n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	sbin := add(root, "sbin", composefs.NewNode(composefs.ModeDir|0o755))
	init := composefs.NewNode(composefs.ModeRegular | 0o755)
	init.Content = []byte("#!/bin/true\n# " + tag + "\n")
	init.Size = uint64(len(init.Content))
	add(sbin, "init", init)
	var buf bytes.Buffer
	if _, err := composefs.Write(&buf, root, nil); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// addImage writes image NAME and, when signer is not nil, its signature.
func (h *hostEnv) addImage(name string, signer crypto.Signer, cert *x509.Certificate) verity.Digest {
	h.t.Helper()
	data := testImageBytes(h.t, name)
	h.write(strings.TrimPrefix(h.imagePath(name), h.root), data, 0o444)
	d, err := verity.DigestReader(bytes.NewReader(data), verity.Params{})
	if err != nil {
		h.t.Fatal(err)
	}
	if signer != nil {
		sig, err := signature.SignDigest(d, signer, cert)
		if err != nil {
			h.t.Fatal(err)
		}
		h.write(strings.TrimPrefix(h.imagePath(name), h.root)+".sig", sig, 0o444)
	}
	return d
}

// config loads a config from JSON with the init's own parser.
func (h *hostEnv) config(js string) *Config {
	h.t.Helper()
	p := filepath.Join(h.t.TempDir(), "config.json")
	if err := os.WriteFile(p, []byte(js), 0o644); err != nil {
		h.t.Fatal(err)
	}
	cfg, err := LoadConfig(p)
	if err != nil {
		h.t.Fatalf("config: %v", err)
	}
	return cfg
}

// run boots with cfg and the kernel command line cmdline.
func (h *hostEnv) run(cfg *Config, cmdline string) (*Status, error) {
	h.t.Helper()
	choice, err := ParseCmdline(cmdline, cfg)
	if err != nil {
		h.t.Fatalf("cmdline: %v", err)
	}
	b := &Boot{Config: cfg, Choice: choice, Log: &Logger{console: &h.console}, Env: h.env}
	return b.Run(context.Background())
}

// ipeFS makes a fake IPE securityfs directory that takes policy NAME.
func (h *hostEnv) ipeFS(name string) string {
	dir := h.env.IPEDir
	for _, f := range []string{"new_policy", "enforce", "policies/" + name + "/active"} {
		h.write(strings.TrimPrefix(filepath.Join(dir, f), h.root), nil, 0o644)
	}
	return dir
}

// signedPolicy returns an IPE policy signed by h's key (attached PKCS#7).
func (h *hostEnv) signedPolicy(name string) []byte {
	text := "policy_name=" + name + " policy_version=0.0.1\nDEFAULT action=ALLOW\n"
	p7, err := signature.Sign([]byte(text), h.key, h.cert, signature.Options{})
	if err != nil {
		h.t.Fatal(err)
	}
	return p7
}

// wantEvents checks the status's events and that the TPM's PCR and the event
// log both replay to them.
func (h *hostEnv) wantEvents(st *Status, want []measure.Event) {
	h.t.Helper()
	var texts []string
	for _, e := range want {
		texts = append(texts, e.Data)
	}
	if !slices.Equal(st.TPM.Events, texts) {
		h.t.Errorf("measured events:\n%s\nwant:\n%s", strings.Join(st.TPM.Events, "\n"), strings.Join(texts, "\n"))
	}
	vals, err := measure.Predict(want, []measure.Alg{measure.Alg(0x000B)})
	if err != nil {
		h.t.Fatal(err)
	}
	wantPCR := hex.EncodeToString(vals[measure.Alg(0x000B)])
	if st.TPM.Banks["sha256"] != wantPCR {
		h.t.Errorf("PCR %d sha256 = %s, want %s (predicted from the events)", st.TPM.PCR, st.TPM.Banks["sha256"], wantPCR)
	}
	f, err := os.Open(filepath.Join(h.root, measure.DefaultLogPath))
	if err != nil {
		h.t.Fatalf("event log: %v", err)
	}
	defer f.Close()
	recs, err := eventlog.Parse(f)
	if err != nil {
		h.t.Fatalf("event log: %v", err)
	}
	if err := measure.VerifyRecords(recs); err != nil {
		h.t.Errorf("event log: %v", err)
	}
	rep, err := measure.Replay(recs)
	if err != nil {
		h.t.Fatal(err)
	}
	if got := hex.EncodeToString(rep[uint32(st.TPM.PCR)][measure.Alg(0x000B)]); got != wantPCR {
		h.t.Errorf("event log replays to %s, want %s", got, wantPCR)
	}
}

// readStatus reads status.json as written.
func (h *hostEnv) readStatus() *Status {
	h.t.Helper()
	b, err := os.ReadFile(filepath.Join(h.root, StatusPath))
	if err != nil {
		h.t.Fatalf("status.json: %v", err)
	}
	var st Status
	if err := json.Unmarshal(b, &st); err != nil {
		h.t.Fatalf("status.json: %v", err)
	}
	return &st
}

func (h *hostEnv) called(kind, sub string) bool {
	for _, c := range h.mounter.calls {
		if strings.HasPrefix(c, kind+" ") && strings.Contains(c, sub) {
			return true
		}
	}
	return false
}

func imageEvents(t *testing.T, name string, d verity.Digest, signer *x509.Certificate, policy []byte) []measure.Event {
	t.Helper()
	evs, err := measure.Events(measure.ImageInfo{Name: name, Digest: d, Signer: signer, Pinned: signer == nil, Policy: policy})
	if err != nil {
		t.Fatal(err)
	}
	return evs
}

const baseConfig = `{"disk": "LABEL=cfsroot-host", "slots": ["default"]`

// TestRunGoodBoot: a signed image is verified, measured (status, PCR and
// event log agree), mounted read-only with verity=require, and status.json
// says so.
func TestRunGoodBoot(t *testing.T) {
	h := newHostEnv(t)
	h.withTPM()
	d := h.addImage("default", h.key, h.cert)
	st, err := h.run(h.config(baseConfig+`}`), "quiet")
	if err != nil {
		t.Fatalf("Run: %v\n%s", err, h.console.String())
	}
	if st.Image != "default" || st.Digest != d.String() || st.VerifiedBy != "signature" || st.DigestSource != "kernel" {
		t.Errorf("status = %+v", st)
	}
	if st.SignerSHA256 != signature.Fingerprint(h.cert) {
		t.Errorf("signer %s, want %s", st.SignerSHA256, signature.Fingerprint(h.cert))
	}
	if !st.TPM.Measured || st.TPM.PCR != 15 {
		t.Errorf("TPM status = %+v", st.TPM)
	}
	h.wantEvents(st, imageEvents(t, "default", d, h.cert, nil))
	written := h.readStatus()
	if written.Digest != st.Digest || written.VerifiedBy != "signature" || written.Upper != "none" || written.Init != "/sbin/init" {
		t.Errorf("status.json = %+v", written)
	}
	for _, want := range []struct{ kind, sub string }{
		{"mount", "/dev/vda disk ext4 0x"},
		{"erofs", "image"},
		{"overlay", "verity=require"},
	} {
		if !h.called(want.kind, want.sub) {
			t.Errorf("no %s call with %q; calls:\n%s", want.kind, want.sub, strings.Join(h.mounter.calls, "\n"))
		}
	}
	if h.called("overlay", "upperdir") {
		t.Errorf("upper none mounted an upper layer: %v", h.mounter.calls)
	}
}

// TestRunSlots covers fallback, the command line's choice and pinned
// digests (config and command line).
func TestRunSlots(t *testing.T) {
	for _, tc := range []struct {
		name     string
		config   string
		cmdline  string
		setup    func(h *hostEnv)
		image    string // booted image
		verified string
		refused  []string
		pinned   bool
	}{
		{
			name:   "fallback to the second slot",
			config: `{"disk": "LABEL=cfsroot-host", "slots": ["a", "b"], "fallback": true}`,
			setup: func(h *hostEnv) {
				h.addImage("a", nil, nil)
				h.addImage("b", h.key, h.cert)
			},
			image: "b", verified: "signature", refused: []string{"a"},
		},
		{
			name:    "cmdline picks the second slot",
			config:  `{"disk": "LABEL=cfsroot-host", "slots": ["a", "b"]}`,
			cmdline: "cfsroot.image=b",
			setup: func(h *hostEnv) {
				h.addImage("a", h.key, h.cert)
				h.addImage("b", h.key, h.cert)
			},
			image: "b", verified: "signature",
		},
		{
			name: "pinned digest in the config",
			setup: func(h *hostEnv) {
				d := h.addImage("default", nil, nil)
				h.configJSON = `{"disk": "LABEL=cfsroot-host", "slots": ["default"], "pinned_digests": {"default": "` + d.String() + `"}}`
			},
			image: "default", verified: "pinned-digest", pinned: true,
		},
		{
			name: "pinned digest on a signed command line",
			setup: func(h *hostEnv) {
				d := h.addImage("default", nil, nil)
				h.configJSON = `{"disk": "LABEL=cfsroot-host", "slots": ["default"], "cmdline_signed": true}`
				h.cmdline = "cfsroot.digest=" + d.String()
			},
			image: "default", verified: "cmdline-digest", pinned: true,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHostEnv(t)
			h.withTPM()
			h.configJSON, h.cmdline = tc.config, tc.cmdline
			tc.setup(h)
			st, err := h.run(h.config(h.configJSON), h.cmdline)
			if err != nil {
				t.Fatalf("Run: %v\n%s", err, h.console.String())
			}
			if st.Image != tc.image || st.VerifiedBy != tc.verified {
				t.Errorf("booted %s verified by %s, want %s by %s", st.Image, st.VerifiedBy, tc.image, tc.verified)
			}
			var refused []string
			for _, r := range st.Refused {
				refused = append(refused, r.Slot)
			}
			if !slices.Equal(refused, tc.refused) {
				t.Errorf("refused %v, want %v", refused, tc.refused)
			}
			d, _ := verity.ParseDigest(st.Digest)
			signer := h.cert
			if tc.pinned {
				signer = nil
			}
			h.wantEvents(st, imageEvents(t, tc.image, d, signer, nil))
		})
	}
}

// TestRunRefused covers every refusal before the mount: each names its step
// and file, and nothing is mounted but the backing disk.
func TestRunRefused(t *testing.T) {
	for _, tc := range []struct {
		name   string
		config string // default baseConfig+"}"
		setup  func(h *hostEnv)
		step   string
		want   string
	}{
		{
			name:  "no signature",
			setup: func(h *hostEnv) { h.addImage("default", nil, nil) },
			step:  "verify:default", want: "no signature",
		},
		{
			name: "bad signature (image changed after signing)",
			setup: func(h *hostEnv) {
				h.addImage("default", h.key, h.cert)
				p := h.imagePath("default")
				data, _ := os.ReadFile(p)
				data[len(data)-1] ^= 1
				os.Chmod(p, 0o644)
				os.WriteFile(p, data, 0o444)
			},
			step: "verify:default", want: "default.cfs.sig",
		},
		{
			name: "signed by an untrusted key",
			setup: func(h *hostEnv) {
				k, c := testKey(t, "not trusted")
				h.addImage("default", k, c)
			},
			step: "verify:default", want: "default.cfs.sig",
		},
		{
			name: "no fs-verity and no allow_ram_copy",
			setup: func(h *hostEnv) {
				h.addImage("default", h.key, h.cert)
				h.noVeri["default.cfs"] = true
			},
			step: "verify:default", want: "allow_ram_copy",
		},
		{
			name:   "pinned digest does not match",
			config: baseConfig + `, "pinned_digests": {"default": "sha256:` + strings.Repeat("ab", 32) + `"}}`,
			setup:  func(h *hostEnv) { h.addImage("default", h.key, h.cert) },
			step:   "verify:default", want: "is not the pinned",
		},
		{
			name: "no trusted certificates",
			setup: func(h *hostEnv) {
				h.addImage("default", h.key, h.cert)
				os.RemoveAll(filepath.Join(h.root, "etc/cfsroot/certs"))
			},
			step: "config", want: "/etc/cfsroot/certs",
		},
		{
			name:  "disk not found",
			setup: func(h *hostEnv) { h.addImage("default", h.key, h.cert); h.disks = nil },
			step:  "disk", want: "no block device with LABEL=cfsroot-host",
		},
		{
			name:  "image missing",
			setup: func(h *hostEnv) {},
			step:  "verify:default", want: "open image",
		},
		{
			name: "disk does not mount",
			setup: func(h *hostEnv) {
				h.addImage("default", h.key, h.cert)
				h.mounter.fail["mount"] = errors.New("wrong fs type")
			},
			step: "disk", want: "wrong fs type",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHostEnv(t)
			tc.setup(h)
			cfg := tc.config
			if cfg == "" {
				cfg = baseConfig + `}`
			}
			_, err := h.run(h.config(cfg), "")
			var se *StepError
			if !errors.As(err, &se) {
				t.Fatalf("Run = %v, want a StepError", err)
			}
			if se.Step != tc.step || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Run = %v (step %s), want step %s and %q", err, se.Step, tc.step, tc.want)
			}
			if h.called("erofs", "") || h.called("overlay", "") {
				t.Errorf("refused image was mounted: %v", h.mounter.calls)
			}
			if _, err := os.Stat(filepath.Join(h.root, StatusPath)); err == nil {
				t.Errorf("status.json written for a refused boot")
			}
		})
	}
}

// TestRunTPM covers an absent TPM with tpm optional (boots, unmeasured,
// says why) and required (refused at measure).
func TestRunTPM(t *testing.T) {
	for _, mode := range []string{"optional", "required"} {
		t.Run(mode, func(t *testing.T) {
			h := newHostEnv(t)
			h.addImage("default", h.key, h.cert)
			st, err := h.run(h.config(baseConfig+`, "tpm": "`+mode+`"}`), "")
			if mode == "required" {
				var se *StepError
				if !errors.As(err, &se) || se.Step != "measure" || !strings.Contains(err.Error(), "no TPM") ||
					!strings.Contains(err.Error(), `"tpm": "optional"`) {
					t.Fatalf(`Run = %v, want step measure: no TPM, naming "tpm": "optional"`, err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Run: %v", err)
			}
			if st.TPM.Measured || !strings.Contains(st.TPM.Error, "no TPM") || h.readStatus().TPM.Error == "" {
				t.Errorf("TPM status = %+v", st.TPM)
			}
		})
	}
}

// TestRunRAMCopy: an image without fs-verity is copied to RAM with
// allow_ram_copy, digested there and the copy is what is mounted.
func TestRunRAMCopy(t *testing.T) {
	h := newHostEnv(t)
	h.withTPM()
	d := h.addImage("default", h.key, h.cert)
	h.noVeri["default.cfs"] = true
	st, err := h.run(h.config(baseConfig+`, "allow_ram_copy": true}`), "")
	if err != nil {
		t.Fatalf("Run: %v\n%s", err, h.console.String())
	}
	if st.DigestSource != "ram-copy" || st.Digest != d.String() {
		t.Errorf("status = %+v", st)
	}
	cp, err := os.ReadFile(filepath.Join(h.root, RunDir, "default.cfs"))
	orig, _ := os.ReadFile(h.imagePath("default"))
	if err != nil || !bytes.Equal(cp, orig) {
		t.Errorf("RAM copy: %v (equal %v)", err, bytes.Equal(cp, orig))
	}
	h.wantEvents(st, imageEvents(t, "default", d, h.cert, nil))
}

// TestRunUpper covers the three writable-layer choices.
func TestRunUpper(t *testing.T) {
	for _, tc := range []struct {
		upper   string
		mounts  []string // substrings of mount calls
		overlay string   // substring of the overlay options
	}{
		{"none", nil, ""},
		{"tmpfs", []string{"tmpfs upper tmpfs"}, "upperdir=" + UpperDir + "/upper,workdir=" + UpperDir + "/work"},
		{"LABEL=data:state/root", []string{"/dev/vdb upper ext4"}, "upperdir=" + UpperDir + "/state/root/upper,workdir=" + UpperDir + "/state/root/work"},
	} {
		t.Run(tc.upper, func(t *testing.T) {
			h := newHostEnv(t)
			h.withTPM()
			h.disks = append(h.disks, BlockDevice{Path: "/dev/vdb", Label: "data", UUID: "da7a0000-0000-4000-8000-000000000002"})
			h.addImage("default", h.key, h.cert)
			st, err := h.run(h.config(baseConfig+`, "upper": "`+tc.upper+`"}`), "")
			if err != nil {
				t.Fatalf("Run: %v\n%s", err, h.console.String())
			}
			if st.Upper != tc.upper {
				t.Errorf("status upper %q, want %q", st.Upper, tc.upper)
			}
			for _, m := range tc.mounts {
				if !h.called("mount", m) {
					t.Errorf("no mount %q: %v", m, h.mounter.calls)
				}
			}
			if tc.overlay == "" {
				if h.called("overlay", "upperdir") {
					t.Errorf("upper none: %v", h.mounter.calls)
				}
			} else if !h.called("overlay", strings.ReplaceAll(tc.overlay, UpperDir, filepath.Join(h.root, UpperDir))) {
				t.Errorf("overlay without %q: %v", tc.overlay, h.mounter.calls)
			}
		})
	}
}

// TestRunIPE covers loading the policy (enforced), an optional policy that
// fails to load (boot goes on, status says why), a required one that fails,
// and a policy file that is missing.
func TestRunIPE(t *testing.T) {
	for _, tc := range []struct {
		name     string
		config   string
		noIPE    bool
		noPolicy bool
		step     string // refused at this step; "" boots
	}{
		{name: "loaded and enforced", config: `, "ipe_policy": "/etc/cfsroot/ipe/policy.p7s", "ipe_enforce": true}`},
		{name: "optional and IPE missing", config: `, "ipe_policy": "/etc/cfsroot/ipe/policy.p7s", "ipe_optional": true}`, noIPE: true},
		{name: "required and IPE missing", config: `, "ipe_policy": "/etc/cfsroot/ipe/policy.p7s"}`, noIPE: true, step: "ipe"},
		{name: "policy file missing", config: `, "ipe_policy": "/etc/cfsroot/ipe/policy.p7s"}`, noPolicy: true, step: "ipe-read"},
		{name: "policy next to the image", config: `, "ipe_policy": "image", "ipe_enforce": true}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHostEnv(t)
			h.withTPM()
			d := h.addImage("default", h.key, h.cert)
			policy := h.signedPolicy("cfsroot_test")
			if !tc.noPolicy {
				h.write("etc/cfsroot/ipe/policy.p7s", policy, 0o644)
				h.write(strings.TrimPrefix(strings.TrimSuffix(h.imagePath("default"), ".cfs")+".ipe.p7s", h.root), policy, 0o644)
			}
			if !tc.noIPE {
				h.ipeFS("cfsroot_test")
			}
			st, err := h.run(h.config(baseConfig+tc.config), "")
			if tc.step != "" {
				var se *StepError
				if !errors.As(err, &se) || se.Step != tc.step {
					t.Fatalf("Run = %v, want a failure at step %s", err, tc.step)
				}
				return
			}
			if err != nil {
				t.Fatalf("Run: %v\n%s", err, h.console.String())
			}
			if tc.noIPE {
				if st.IPE == nil || st.IPE.Active || st.IPE.Error == "" {
					t.Errorf("IPE status = %+v, want the load error", st.IPE)
				}
				return
			}
			if st.IPE == nil || !st.IPE.Active || st.IPE.Policy != "cfsroot_test" {
				t.Errorf("IPE status = %+v", st.IPE)
			}
			got, _ := os.ReadFile(filepath.Join(h.env.IPEDir, "new_policy"))
			if !bytes.Equal(got, policy) {
				t.Errorf("new_policy got %d bytes, want the signed policy", len(got))
			}
			if a, _ := os.ReadFile(filepath.Join(h.env.IPEDir, "policies/cfsroot_test/active")); string(a) != "1" {
				t.Errorf("policy not activated: %q", a)
			}
			if e, _ := os.ReadFile(filepath.Join(h.env.IPEDir, "enforce")); string(e) != "1" {
				t.Errorf("not enforced: %q", e)
			}
			h.wantEvents(st, imageEvents(t, "default", d, h.cert, policy))
		})
	}
}

// TestRunInitCheck: a root without the configured init is refused before
// status.json is written.
func TestRunInitCheck(t *testing.T) {
	h := newHostEnv(t)
	h.addImage("default", h.key, h.cert)
	h.mounter.lower = map[string]fakeFile{"etc/hostname": {data: "x\n", mode: 0o644}}
	_, err := h.run(h.config(baseConfig+`, "tpm": "optional"}`), "")
	var se *StepError
	if !errors.As(err, &se) || se.Step != "init-check" {
		t.Fatalf("Run = %v, want a failure at init-check", err)
	}
}

// TestRunMountFailures: an EROFS or overlay mount that fails stops the boot
// at the mount step, naming what it mounted.
func TestRunMountFailures(t *testing.T) {
	for _, kind := range []string{"erofs", "overlay"} {
		t.Run(kind, func(t *testing.T) {
			h := newHostEnv(t)
			h.addImage("default", h.key, h.cert)
			h.mounter.fail[kind] = errors.New("injected " + kind + " failure")
			_, err := h.run(h.config(baseConfig+`, "tpm": "optional"}`), "")
			var se *StepError
			if !errors.As(err, &se) || se.Step != "mount" || !strings.Contains(err.Error(), "injected "+kind) {
				t.Fatalf("Run = %v, want a failure at mount", err)
			}
		})
	}
}
