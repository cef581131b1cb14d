package boot

import (
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-tpm-tools/simulator"
	"github.com/google/go-tpm/tpm2/transport"
	"golang.org/x/sys/unix"

	"github.com/cfsroot/cfsroot/internal/testutil"
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
	if o.Upper == "" {
		return nil
	}
	return filepath.WalkDir(o.Upper, func(p string, d os.DirEntry, err error) error {
		if err != nil || p == o.Upper {
			return err
		}
		rel, _ := filepath.Rel(o.Upper, p)
		dst := filepath.Join(target, rel)
		switch {
		case d.IsDir():
			return os.MkdirAll(dst, 0o755)
		case d.Type()&os.ModeSymlink != 0:
			l, err := os.Readlink(p)
			if err != nil {
				return err
			}
			return writeFake(dst, fakeFile{symlink: l})
		default:
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			st, _ := d.Info()
			return writeFake(dst, fakeFile{data: string(b), mode: st.Mode().Perm()})
		}
	})
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

// testTree is a merged-/usr root: /sbin is a symlink into /usr and the
// init a symlink to systemd.
var testTree = map[string]fakeFile{
	"sbin":                    {symlink: "usr/sbin"},
	"usr/sbin/init":           {symlink: "../lib/systemd/systemd"},
	"usr/lib/systemd/systemd": {data: "#!/bin/true\n", mode: 0o755},
	"etc/hostname":            {data: "appliance\n", mode: 0o644},
}

func newHostEnv(t *testing.T) *hostEnv {
	t.Helper()
	h := &hostEnv{t: t, root: t.TempDir(), noVeri: map[string]bool{}}
	h.mounter = &recordingMounter{lower: testTree, fail: map[string]error{}}
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
	return testutil.SigningCert(t, cn)
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

// testImageBytes is a real composefs image of tree (directories made as
// needed); tag goes into a file so images differ.
func testImageBytes(t *testing.T, tag string, tree map[string]fakeFile) []byte {
	t.Helper()
	root := composefs.NewNode(composefs.ModeDir | 0o755)
	dirOf := func(p string) *composefs.Node {
		d := root
		for _, name := range strings.Split(p, "/") {
			if name == "" || name == "." {
				continue
			}
			n := d.Lookup(name)
			if n == nil {
				n = composefs.NewNode(composefs.ModeDir | 0o755)
				if err := d.Add(name, n); err != nil {
					t.Fatal(err)
				}
			}
			d = n
		}
		return d
	}
	files := map[string]fakeFile{"etc/tag": {data: tag + "\n", mode: 0o644}}
	for p, f := range tree {
		files[p] = f
	}
	for p, f := range files {
		var n *composefs.Node
		if f.symlink != "" {
			n = composefs.NewNode(composefs.ModeSymlink | 0o777)
			n.Payload = f.symlink
		} else {
			n = composefs.NewNode(composefs.ModeRegular | uint32(f.mode))
			n.Content = []byte(f.data)
			n.Size = uint64(len(n.Content))
		}
		if err := dirOf(filepath.Dir(p)).Add(filepath.Base(p), n); err != nil {
			t.Fatal(err)
		}
	}
	var buf bytes.Buffer
	if _, err := composefs.Write(&buf, root, nil); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// addImage writes image NAME and, when signer is not nil, its signature.
func (h *hostEnv) addImage(name string, signer crypto.Signer, cert *x509.Certificate) verity.Digest {
	h.t.Helper()
	return h.addImageBytes(name, testImageBytes(h.t, name, h.mounter.lower), signer, cert)
}

// addImageBytes writes data as image NAME and, when signer is not nil, its
// signature.
func (h *hostEnv) addImageBytes(name string, data []byte, signer crypto.Signer, cert *x509.Certificate) verity.Digest {
	h.t.Helper()
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

// ipeFS makes a fake IPE securityfs directory for policy NAME. With held
// set, it shows what a kernel that took the policy shows: policies/NAME/pkcs7
// holds it.
func (h *hostEnv) ipeFS(name string, held []byte) string {
	dir := h.env.IPEDir
	for _, f := range []string{"new_policy", "enforce", "policies/" + name + "/active"} {
		h.write(strings.TrimPrefix(filepath.Join(dir, f), h.root), nil, 0o644)
	}
	if held != nil {
		h.write(strings.TrimPrefix(filepath.Join(dir, "policies", name, "pkcs7"), h.root), held, 0o444)
	}
	return dir
}

// pcr reads PCR 15's sha256 bank from the simulator.
func (h *hostEnv) pcr() string {
	h.t.Helper()
	m, err := measure.New(context.Background(), h.tpm)
	if err != nil {
		h.t.Fatal(err)
	}
	vals, err := m.Read(context.Background(), 15)
	if err != nil {
		h.t.Fatal(err)
	}
	return hex.EncodeToString(vals[measure.Alg(0x000B)])
}

// wantPCR checks that the TPM's PCR 15 (sha256) is the one events predict.
func (h *hostEnv) wantPCR(events ...measure.Event) {
	h.t.Helper()
	vals, err := measure.Predict(events, []measure.Alg{measure.Alg(0x000B)})
	if err != nil {
		h.t.Fatal(err)
	}
	var texts []string
	for _, e := range events {
		texts = append(texts, e.Data)
	}
	if got, want := h.pcr(), hex.EncodeToString(vals[measure.Alg(0x000B)]); got != want {
		h.t.Errorf("PCR 15 = %s, want %s from %q", got, want, texts)
	}
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
	return infoEvents(t, measure.ImageInfo{Name: name, Digest: d, Signer: signer, Pinned: signer == nil, Policy: policy})
}

func infoEvents(t *testing.T, info measure.ImageInfo) []measure.Event {
	t.Helper()
	evs, err := measure.Events(info)
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

// TestRunRefused covers every refusal: each names its step and file,
// nothing is mounted but the backing disk, no status.json is written, and
// PCR 15 holds the failure event naming the step (issue 12, finding 2:
// before this, a failure before measuring left it at zero, which a shell
// could extend to a good boot's value).
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
		{
			// Issue 12, finding 12: a signed image truncated inside its
			// inode table is refused naming it, before anything mounts it.
			name: "damaged image, signed",
			setup: func(h *hostEnv) {
				data := testImageBytes(t, "default", h.mounter.lower)
				h.addImageBytes("default", data[:len(data)-512], h.key, h.cert)
			},
			step: "verify:default", want: "image default is damaged",
		},
		{
			name: "not an image at all, signed",
			setup: func(h *hostEnv) {
				h.addImageBytes("default", bytes.Repeat([]byte("x"), 8192), h.key, h.cert)
			},
			step: "verify:default", want: "image default is damaged",
		},
		{
			// Issue 12, finding 9: a RAM copy larger than configured is
			// refused, and removed.
			name:   "RAM copy too large",
			config: baseConfig + `, "allow_ram_copy": true, "ram_copy_max_mib": 1}`,
			setup: func(h *hostEnv) {
				data := testImageBytes(t, "default", h.mounter.lower)
				h.addImageBytes("default", append(data, make([]byte, 1<<20)...), h.key, h.cert)
				h.noVeri["default.cfs"] = true
			},
			step: "verify:default", want: "more than ram_copy_max_mib (1 MiB)",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHostEnv(t)
			h.withTPM()
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
			if _, err := os.Stat(filepath.Join(h.root, RunDir, "default.cfs")); err == nil {
				t.Errorf("a refused RAM copy was left in %s", RunDir)
			}
			h.wantPCR(measure.FailureEvent(tc.step))
		})
	}
}

// TestRunFailureCap (issue 12, finding 2): a failure after the image was
// measured caps PCR 15 with the failure event, so it never holds the good
// boot's value; the cap is in the event log too. Fail runs once.
func TestRunFailureCap(t *testing.T) {
	h := newHostEnv(t)
	h.withTPM()
	d := h.addImage("default", h.key, h.cert)
	cfg := h.config(baseConfig + `, "init": "/sbin/missing"}`)
	choice, _ := ParseCmdline("", cfg)
	b := &Boot{Config: cfg, Choice: choice, Log: &Logger{console: &h.console}, Env: h.env}
	_, err := b.Run(context.Background())
	var se *StepError
	if !errors.As(err, &se) || se.Step != "init-check" {
		t.Fatalf("Run = %v, want a failure at init-check", err)
	}
	good := imageEvents(t, "default", d, h.cert, nil)
	capped := append(good[:2:2], measure.FailureEvent("init-check"))
	h.wantPCR(capped...)
	if got := h.pcr(); got == h.predict(good) {
		t.Errorf("PCR 15 holds the good boot's value after a failure")
	}
	if err := b.Fail(context.Background(), err); err != nil {
		t.Errorf("second Fail: %v", err)
	}
	h.wantPCR(capped...) // not extended twice
	recs, err := eventlog.ParseFile(filepath.Join(h.root, measure.DefaultLogPath))
	if err != nil || len(recs) != 3 || recs[2].Content.String != "cfsroot-failure:init-check" {
		t.Errorf("event log: %d records, %v", len(recs), err)
	}
	if !strings.Contains(h.console.String(), "PCR 15 capped with cfsroot-failure:init-check") {
		t.Errorf("console does not say the PCR was capped:\n%s", h.console.String())
	}

	// A failure before Run (config, command line, modules): Fail with a
	// Boot that has no config yet caps PCR 15.
	h2 := newHostEnv(t)
	h2.tpm = h.tpm
	before := h.pcr()
	b2 := &Boot{Log: &Logger{console: &h2.console}, Env: h2.env}
	if err := b2.Fail(context.Background(), &StepError{Step: "config", Err: errors.New("bad")}); err != nil {
		t.Fatalf("Fail without a config: %v", err)
	}
	if after := h.pcr(); after == before {
		t.Errorf("Fail without a config did not extend PCR 15")
	}

	// No TPM: Fail says the PCR is not capped (the init then refuses to
	// start a shell).
	h3 := newHostEnv(t)
	b3 := &Boot{Log: &Logger{console: &h3.console}, Env: h3.env}
	if err := b3.Fail(context.Background(), errors.New("x")); err == nil || !strings.Contains(err.Error(), "not capped") {
		t.Errorf("Fail without a TPM = %v, want not capped", err)
	}
}

func (h *hostEnv) predict(events []measure.Event) string {
	vals, err := measure.Predict(events, []measure.Alg{measure.Alg(0x000B)})
	if err != nil {
		h.t.Fatal(err)
	}
	return hex.EncodeToString(vals[measure.Alg(0x000B)])
}

// failingTPM passes commands to a TPM, failing command number failAt
// (counting from 1) with a transport error.
type failingTPM struct {
	inner  transport.TPM
	n      int
	failAt []int
}

func (f *failingTPM) Send(cmd []byte) ([]byte, error) {
	f.n++
	if slices.Contains(f.failAt, f.n) {
		return nil, fmt.Errorf("injected TPM failure at command %d", f.n)
	}
	return f.inner.Send(cmd)
}

// TestRunTPM covers an absent TPM with tpm optional (boots, unmeasured,
// says why) and required (refused at measure), and a TPM that fails
// half-way with tpm optional: the PCR is capped with cfsroot-failure:measure
// so the booted system cannot complete it to the good value, and the boot
// goes on unmeasured; if the cap fails too, status.json says so.
func TestRunTPM(t *testing.T) {
	for _, tc := range []struct {
		name     string
		mode     string
		tpm      bool
		failAt   []int // TPM commands that fail: 1 reads the banks, 2 extends the image event...
		step     string
		capped   bool
		pcrAfter func(h *hostEnv, d verity.Digest) []measure.Event
	}{
		{name: "absent and optional", mode: "optional"},
		{name: "absent and required", mode: "required", step: "measure"},
		{name: "fails half-way and optional", mode: "optional", tpm: true, failAt: []int{3}, capped: true,
			pcrAfter: func(h *hostEnv, d verity.Digest) []measure.Event {
				return append(imageEvents(t, "default", d, h.cert, nil)[:1], measure.FailureEvent("measure"))
			}},
		{name: "fails half-way and the cap fails and optional", mode: "optional", tpm: true, failAt: []int{3, 4},
			pcrAfter: func(h *hostEnv, d verity.Digest) []measure.Event {
				return imageEvents(t, "default", d, h.cert, nil)[:1]
			}},
		{name: "fails half-way and required", mode: "required", tpm: true, failAt: []int{3}, step: "measure",
			pcrAfter: func(h *hostEnv, d verity.Digest) []measure.Event {
				return append(imageEvents(t, "default", d, h.cert, nil)[:1], measure.FailureEvent("measure"))
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHostEnv(t)
			d := h.addImage("default", h.key, h.cert)
			var sim transport.TPM
			if tc.tpm {
				h.withTPM()
				sim = h.tpm
				h.tpm = &failingTPM{inner: sim, failAt: tc.failAt}
			}
			st, err := h.run(h.config(baseConfig+`, "tpm": "`+tc.mode+`"}`), "")
			if tc.step != "" {
				var se *StepError
				if !errors.As(err, &se) || se.Step != tc.step {
					t.Fatalf("Run = %v, want a failure at step %s", err, tc.step)
				}
				if !tc.tpm && (!strings.Contains(err.Error(), "no TPM") || !strings.Contains(err.Error(), `"tpm": "optional"`)) {
					t.Errorf(`Run = %v, want no TPM, naming "tpm": "optional"`, err)
				}
			} else {
				if err != nil {
					t.Fatalf("Run: %v", err)
				}
				if st.TPM.Measured || st.TPM.Error == "" || st.TPM.Capped != tc.capped || h.readStatus().TPM.Error == "" {
					t.Errorf("TPM status = %+v", st.TPM)
				}
				if !tc.tpm && !strings.Contains(st.TPM.Error, "no TPM") {
					t.Errorf("TPM error %q does not say there is no TPM", st.TPM.Error)
				}
			}
			if tc.pcrAfter != nil {
				h.tpm = sim
				h.wantPCR(tc.pcrAfter(h, d)...)
			}
		})
	}
}

// TestRunRAMCopy: an image without fs-verity is copied to RAM with
// allow_ram_copy, digested there and the copy is what is mounted. A slot
// whose copy is refused (too large: ram_copy_max_mib) leaves no copy
// behind, and the next slot boots.
func TestRunRAMCopy(t *testing.T) {
	h := newHostEnv(t)
	h.withTPM()
	data := testImageBytes(t, "big", h.mounter.lower)
	h.addImageBytes("big", append(data, make([]byte, 1<<20)...), h.key, h.cert)
	d := h.addImage("default", h.key, h.cert)
	h.noVeri["default.cfs"], h.noVeri["big.cfs"] = true, true
	st, err := h.run(h.config(`{"disk": "LABEL=cfsroot-host", "slots": ["big", "default"], "fallback": true, "allow_ram_copy": true, "ram_copy_max_mib": 1}`), "")
	if err != nil {
		t.Fatalf("Run: %v\n%s", err, h.console.String())
	}
	if st.DigestSource != "ram-copy" || st.Digest != d.String() || len(st.Refused) != 1 || !strings.Contains(st.Refused[0].Reason, "ram_copy_max_mib") {
		t.Errorf("status = %+v", st)
	}
	cp, err := os.ReadFile(filepath.Join(h.root, RunDir, "default.cfs"))
	orig, _ := os.ReadFile(h.imagePath("default"))
	if err != nil || !bytes.Equal(cp, orig) {
		t.Errorf("RAM copy: %v (equal %v)", err, bytes.Equal(cp, orig))
	}
	if _, err := os.Stat(filepath.Join(h.root, RunDir, "big.cfs")); err == nil {
		t.Errorf("the refused copy of big.cfs is still in %s", RunDir)
	}
	h.wantEvents(st, imageEvents(t, "default", d, h.cert, nil))
}

// TestRunUpper covers the three writable-layer choices. A persistent upper
// layer is measured (its config value and filesystem UUID) and /usr is
// bound read-only from the image.
func TestRunUpper(t *testing.T) {
	const dataUUID = "da7a0000-0000-4000-8000-000000000002"
	for _, tc := range []struct {
		upper   string
		mounts  []string // substrings of mount calls
		overlay string   // substring of the overlay options
	}{
		{"none", nil, ""},
		{"tmpfs", []string{"tmpfs upper tmpfs"}, "upperdir=" + UpperDir + "/upper,workdir=" + UpperDir + "/work"},
		{"LABEL=data:state/root", []string{"/dev/vdb upper ext4", "usr usr  0x5000", "usr  0x1025"}, "upperdir=" + UpperDir + "/state/root/upper,workdir=" + UpperDir + "/state/root/work"},
	} {
		t.Run(tc.upper, func(t *testing.T) {
			h := newHostEnv(t)
			h.withTPM()
			h.disks = append(h.disks, BlockDevice{Path: "/dev/vdb", Label: "data", UUID: dataUUID})
			d := h.addImage("default", h.key, h.cert)
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
			info := measure.ImageInfo{Name: "default", Digest: d, Signer: h.cert}
			if tc.overlay == "" {
				if h.called("overlay", "upperdir") {
					t.Errorf("upper none: %v", h.mounter.calls)
				}
			} else if !h.called("overlay", strings.ReplaceAll(tc.overlay, UpperDir, filepath.Join(h.root, UpperDir))) {
				t.Errorf("overlay without %q: %v", tc.overlay, h.mounter.calls)
			}
			if strings.Contains(tc.upper, ":") {
				info.Upper = &measure.Upper{Spec: tc.upper, FSUUID: dataUUID}
			} else if h.called("mount", "usr usr") {
				t.Errorf("/usr bound read-only without a persistent upper: %v", h.mounter.calls)
			}
			h.wantEvents(st, infoEvents(t, info))
		})
	}
}

// TestRunUpperPlanted (issue 12, finding 1): a persistent upper layer may
// not hold what must come from the verified image. Each planted file is
// refused before anything is measured or mounted (upper-check), or, when
// only the merged root shows it, at init-check; PCR 15 is capped.
func TestRunUpperPlanted(t *testing.T) {
	// A root without merged /usr: /bin is a directory holding the init,
	// /sbin/init a symlink to /opt/real-init.
	classic := map[string]fakeFile{
		"bin/init":      {data: "#!/bin/true\n", mode: 0o755},
		"sbin/init":     {symlink: "/opt/real-init"},
		"opt/real-init": {data: "#!/bin/true\n", mode: 0o755},
		"usr/bin/true":  {data: "#!/bin/true\n", mode: 0o755},
	}
	for _, tc := range []struct {
		name    string
		tree    map[string]fakeFile // the image (default testTree)
		init    string
		plant   map[string]fakeFile // in DIR/upper
		step    string
		want    string
		allowed bool
		// symlinkDir, when set, makes DIR ("state") a symlink to it
		symlinkDir string
	}{
		{name: "sbin/init through the /sbin symlink", plant: map[string]fakeFile{"sbin/init": {data: "evil", mode: 0o755}},
			step: "upper-check", want: "/sbin, a symlink in the verified image"},
		{name: "/usr", plant: map[string]fakeFile{"usr/lib/systemd/systemd": {data: "evil", mode: 0o755}},
			step: "upper-check", want: "holds /usr"},
		{name: "the init itself", tree: classic, init: "/bin/init", plant: map[string]fakeFile{"bin/init": {data: "evil", mode: 0o755}},
			step: "upper-check", want: "on the path of the init /bin/init"},
		{name: "a symlink on the init's path", tree: classic, init: "/bin/init", plant: map[string]fakeFile{"bin": {symlink: "/tmp"}},
			step: "upper-check", want: "holds /bin on the path"},
		{name: "the init's symlink target", tree: classic, init: "/sbin/init", plant: map[string]fakeFile{"opt/real-init": {data: "evil", mode: 0o755}},
			step: "init-check", want: "resolves to opt/real-init, which the persistent upper layer holds"},
		{name: "DIR a symlink", plant: map[string]fakeFile{"../../state2/x": {data: "x", mode: 0o644}}, symlinkDir: "/",
			step: "upper", want: "is a symlink"},
		{name: "a file in /etc", plant: map[string]fakeFile{"etc/motd": {data: "kept", mode: 0o644}}, allowed: true},
		{name: "a file in a directory on the init's path", tree: classic, init: "/bin/init", plant: map[string]fakeFile{"bin/other": {data: "kept", mode: 0o755}}, allowed: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHostEnv(t)
			h.withTPM()
			if tc.tree != nil {
				h.mounter.lower = tc.tree
			}
			h.disks = append(h.disks, BlockDevice{Path: "/dev/vdb", Label: "data", UUID: "da7a0000-0000-4000-8000-000000000002"})
			d := h.addImage("default", h.key, h.cert)
			for p, f := range tc.plant {
				if err := writeFake(filepath.Join(h.root, UpperDir, "state/upper", p), f); err != nil {
					t.Fatal(err)
				}
			}
			if tc.symlinkDir != "" {
				os.RemoveAll(filepath.Join(h.root, UpperDir, "state"))
				os.Symlink(tc.symlinkDir, filepath.Join(h.root, UpperDir, "state"))
			}
			cfg := baseConfig + `, "upper": "LABEL=data:state"`
			if tc.init != "" {
				cfg += `, "init": "` + tc.init + `"`
			}
			_, err := h.run(h.config(cfg+`}`), "")
			if tc.allowed {
				if err != nil {
					t.Fatalf("Run: %v", err)
				}
				return
			}
			var se *StepError
			if !errors.As(err, &se) || se.Step != tc.step || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Run = %v, want step %s: %q", err, tc.step, tc.want)
			}
			if tc.step == "upper-check" || tc.step == "upper" {
				h.wantPCR(measure.FailureEvent(tc.step))
				if h.called("overlay", "") {
					t.Errorf("overlay mounted: %v", h.mounter.calls)
				}
			} else {
				evs := infoEvents(t, measure.ImageInfo{Name: "default", Digest: d, Signer: h.cert,
					Upper: &measure.Upper{Spec: "LABEL=data:state", FSUUID: "da7a0000-0000-4000-8000-000000000002"}})
				h.wantPCR(append(evs[:3:3], measure.FailureEvent(tc.step))...)
			}
		})
	}
}

// TestRunIPE covers loading the policy (enforced), an optional policy that
// fails to load (boot goes on, status says why, and a distinct event is
// measured), a required one that fails, a policy file that is missing, and
// a policy the kernel did not take (issue 12, finding 3: measured only
// after the kernel took it, from what the kernel holds).
func TestRunIPE(t *testing.T) {
	const p7 = "/etc/cfsroot/ipe/policy.p7s"
	for _, tc := range []struct {
		name     string
		config   string
		noIPE    bool
		notTaken bool // IPE exists but does not show the policy (the kernel refused it)
		noPolicy bool
		step     string // refused at this step; "" boots
		enforce  bool
	}{
		{name: "loaded and enforced", config: `, "ipe_policy": "` + p7 + `", "ipe_enforce": true}`, enforce: true},
		{name: "loaded and not enforced", config: `, "ipe_policy": "` + p7 + `"}`},
		{name: "optional and IPE missing", config: `, "ipe_policy": "` + p7 + `", "ipe_optional": true}`, noIPE: true},
		{name: "optional and not taken", config: `, "ipe_policy": "` + p7 + `", "ipe_optional": true, "ipe_enforce": true}`, notTaken: true},
		{name: "required and IPE missing", config: `, "ipe_policy": "` + p7 + `"}`, noIPE: true, step: "ipe"},
		{name: "required and not taken", config: `, "ipe_policy": "` + p7 + `"}`, notTaken: true, step: "ipe"},
		{name: "policy file missing", config: `, "ipe_policy": "` + p7 + `"}`, noPolicy: true, step: "ipe-read"},
		{name: "policy next to the image", config: `, "ipe_policy": "image", "ipe_enforce": true}`, enforce: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHostEnv(t)
			h.withTPM()
			d := h.addImage("default", h.key, h.cert)
			policy := h.signedPolicy("cfsroot_test")
			if !tc.noPolicy {
				h.write(strings.TrimPrefix(p7, "/"), policy, 0o644)
				h.write(strings.TrimPrefix(strings.TrimSuffix(h.imagePath("default"), ".cfs")+".ipe.p7s", h.root), policy, 0o644)
			}
			if !tc.noIPE {
				held := policy
				if tc.notTaken {
					held = h.signedPolicy("cfsroot_test") // another signature: not what was loaded
				}
				h.ipeFS("cfsroot_test", held)
			}
			st, err := h.run(h.config(baseConfig+tc.config), "")
			good := imageEvents(t, "default", d, h.cert, nil)
			if tc.step != "" {
				var se *StepError
				if !errors.As(err, &se) || se.Step != tc.step {
					t.Fatalf("Run = %v, want a failure at step %s", err, tc.step)
				}
				if tc.step == "ipe" {
					h.wantPCR(good[0], good[1], measure.FailureEvent("ipe"))
				}
				return
			}
			if err != nil {
				t.Fatalf("Run: %v\n%s", err, h.console.String())
			}
			if tc.noIPE || tc.notTaken {
				// Enforced is the kernel's enforce state, read back.
				e, _ := os.ReadFile(filepath.Join(h.env.IPEDir, "enforce"))
				if st.IPE == nil || st.IPE.Active || st.IPE.Enforced != (string(e) == "1") || st.IPE.Error == "" {
					t.Errorf("IPE status = %+v, want the load error", st.IPE)
				}
				if tc.notTaken && !strings.Contains(st.IPE.Error, "IPE holds another policy") {
					t.Errorf("IPE error %q", st.IPE.Error)
				}
				h.wantEvents(st, []measure.Event{good[0], good[1], measure.PolicyFailedEvent(policy), measure.Separator()})
				return
			}
			if st.IPE == nil || !st.IPE.Active || st.IPE.Policy != "cfsroot_test" || st.IPE.Enforced != tc.enforce {
				t.Errorf("IPE status = %+v", st.IPE)
			}
			got, _ := os.ReadFile(filepath.Join(h.env.IPEDir, "new_policy"))
			if !bytes.Equal(got, policy) {
				t.Errorf("new_policy got %d bytes, want the signed policy", len(got))
			}
			if a, _ := os.ReadFile(filepath.Join(h.env.IPEDir, "policies/cfsroot_test/active")); string(a) != "1" {
				t.Errorf("policy not activated: %q", a)
			}
			h.wantEvents(st, infoEvents(t, measure.ImageInfo{Name: "default", Digest: d, Signer: h.cert, Policy: policy, IPEEnforce: tc.enforce}))
		})
	}
}

// TestRunInitCheck: a root without the configured init is refused before
// status.json is written.
func TestRunInitCheck(t *testing.T) {
	h := newHostEnv(t)
	h.mounter.lower = map[string]fakeFile{"etc/hostname": {data: "x\n", mode: 0o644}}
	h.addImage("default", h.key, h.cert)
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

// TestRunPanics (issue 12, finding 5): a panic in a step's dependency (a
// library tripped by hostile input) becomes that step's error, goes
// through the failure cap, and never reaches PID 1.
func TestRunPanics(t *testing.T) {
	for _, tc := range []struct {
		step      string
		inject    func(h *hostEnv)
		provision bool // provision_verity, an image with objects, none with fs-verity
	}{
		{step: "disk", inject: func(h *hostEnv) {
			h.env.FindDisk = func(context.Context, DiskSelector, time.Duration) (BlockDevice, error) {
				var b []byte
				_ = b[0xFFFF] // as the GPT parser did on HeaderSize 0xFFFF
				return BlockDevice{}, nil
			}
		}},
		{step: "verify:default", inject: func(h *hostEnv) {
			h.env.Digest = func(*os.File) (verity.Digest, error) { panic("digest") }
		}},
		{step: "measure", inject: func(h *hostEnv) {
			h.env.OpenTPM = func(context.Context) (*measure.Measurer, error) { panic("tpm") }
		}},
		// provision_verity, in the read-write window: the disk must be
		// read-only again, also when the panic is in a worker goroutine
		// (which no recover in the step could catch: it ended PID 1).
		{step: "slots", provision: true, inject: func(h *hostEnv) {
			h.env.EnableVerity = func(f *os.File, sig []byte) error { panic("enable image") }
		}},
		{step: "slots", provision: true, inject: func(h *hostEnv) {
			h.env.EnableVerity = func(f *os.File, sig []byte) error {
				if strings.HasSuffix(f.Name(), ".cfs") {
					delete(h.noVeri, filepath.Base(f.Name()))
					return nil
				}
				panic("enable object")
			}
		}},
		{step: "mount", inject: func(h *hostEnv) {
			h.mounter.hook = func(kind string) {
				if kind == "overlay" {
					panic("overlay")
				}
			}
		}},
	} {
		t.Run(tc.step, func(t *testing.T) {
			h := newHostEnv(t)
			h.withTPM()
			cfg := baseConfig + `}`
			if tc.provision {
				tree := t.TempDir()
				os.WriteFile(filepath.Join(tree, "file"), bytes.Repeat([]byte("object"), 20), 0o644)
				store, _ := h.addStoreImage("default", tree)
				filepath.Walk(store.Dir(), func(p string, info os.FileInfo, err error) error {
					if info.Mode().IsRegular() {
						h.noVeri[filepath.Base(p)] = true
					}
					return nil
				})
				h.noVeri["default.cfs"] = true
				cfg = baseConfig + `, "provision_verity": true}`
			} else {
				h.addImage("default", h.key, h.cert)
			}
			tc.inject(h)
			_, err := h.run(h.config(cfg), "")
			var se *StepError
			if !errors.As(err, &se) || se.Step != tc.step || !strings.Contains(err.Error(), "panic") {
				t.Fatalf("Run = %v, want step %s: panic", err, tc.step)
			}
			if !strings.Contains(h.console.String(), "capped with cfsroot-failure:"+tc.step) {
				t.Errorf("PCR not capped after the panic:\n%s", h.console.String())
			}
			wantReadOnly(t, h)
		})
	}
}

// TestMoveTargets (issue 12, finding 10): switch_root's mount targets are
// resolved inside the new root: an image whose /run is a symlink to an
// absolute path or out through .. gets it inside the new root.
func TestMoveTargets(t *testing.T) {
	root := t.TempDir()
	for _, d := range []string{"dev", "proc", "sys", "var/run", "tmp"} {
		os.MkdirAll(filepath.Join(root, d), 0o755)
	}
	os.Symlink("/var/run", filepath.Join(root, "run"))
	fds, err := moveTargets(root)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		for _, fd := range fds {
			unix.Close(fd)
		}
	}()
	got, _ := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", fds["/run"]))
	if want := filepath.Join(root, "var/run"); got != want {
		t.Errorf("/run resolves to %s, want %s", got, want)
	}
	os.Remove(filepath.Join(root, "run"))
	os.Symlink("../../../../../../../../tmp", filepath.Join(root, "run"))
	fds2, err := moveTargets(root)
	if err != nil {
		t.Fatal(err)
	}
	got, _ = os.Readlink(fmt.Sprintf("/proc/self/fd/%d", fds2["/run"]))
	for _, fd := range fds2 {
		unix.Close(fd)
	}
	if want := filepath.Join(root, "tmp"); got != want {
		t.Errorf("/run -> ../../tmp resolves to %s, want %s (inside the new root)", got, want)
	}
	os.Remove(filepath.Join(root, "run"))
	if _, err := moveTargets(root); err == nil || !strings.Contains(err.Error(), "does the image have /run") {
		t.Errorf("missing /run: %v", err)
	}
}
