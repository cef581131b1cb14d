package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cfsroot/cfsroot/internal/testutil"
	"github.com/cfsroot/cfsroot/internal/testutil/simtpm"
	"github.com/cfsroot/cfsroot/measure"
	"github.com/cfsroot/cfsroot/rootfs/signature"
	"github.com/cfsroot/cfsroot/rootfs/verity"
)

// pcrFixture is a signed image, its certificate and a policy file, made with
// the independent tools (openssl, fsverity-utils).
type pcrFixture struct {
	dir, image, sig, cert, policy string
}

func newPCRFixture(t *testing.T) pcrFixture {
	t.Helper()
	testutil.RequireTool(t, "fsverity")
	dir := t.TempDir()
	f := pcrFixture{dir: dir, image: randomFile(t, dir, 70000)}
	var key string
	key, f.cert = opensslKey(t, dir, "signer", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256")
	f.sig = filepath.Join(dir, "image.cfs.sig")
	testutil.Run(t, "fsverity", "sign", "--key="+key, "--cert="+f.cert, f.image, f.sig)
	f.policy = filepath.Join(dir, "policy.p7s")
	os.WriteFile(filepath.Join(dir, "policy.txt"), []byte("policy_name=test policy_version=0.0.1\nDEFAULT action=ALLOW\n"), 0o644)
	testutil.Run(t, "openssl", "smime", "-sign", "-in", filepath.Join(dir, "policy.txt"), "-signer", f.cert, "-inkey", key,
		"-noattr", "-nodetach", "-nosmimecap", "-outform", "der", "-out", f.policy)
	return f
}

func sh(t *testing.T, stdin []byte, name string, args ...string) []byte {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Stdin = bytes.NewReader(stdin)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %v: %v", name, args, err)
	}
	return out
}

// opensslPCR chains PCR = H(PCR || H(text)) from zeros with openssl alone.
func opensslPCR(t *testing.T, flag string, size int, texts []string) string {
	pcr := make([]byte, size)
	for _, s := range texts {
		d := sh(t, []byte(s), "openssl", "dgst", "-binary", flag)
		pcr = sh(t, append(pcr, d...), "openssl", "dgst", "-binary", flag)
	}
	return hex.EncodeToString(pcr)
}

// TestPCRPredictMatchesIndependentTools derives the event texts from
// fsverity-utils and openssl, chains them with openssl, and compares with
// `cfsroot pcr predict`.
func TestPCRPredictMatchesIndependentTools(t *testing.T) {
	f := newPCRFixture(t)
	digest := strings.Fields(string(testutil.Run(t, "fsverity", "digest", f.image)))[0]
	fpOut := string(testutil.Run(t, "openssl", "x509", "-in", f.cert, "-noout", "-fingerprint", "-sha256"))
	fp := strings.ToLower(strings.ReplaceAll(strings.TrimSpace(fpOut[strings.Index(fpOut, "=")+1:]), ":", ""))
	pol := strings.Fields(string(testutil.Run(t, "openssl", "dgst", "-sha256", "-r", f.policy)))[0]
	texts := []string{
		"cfsroot-image:image:" + digest,
		"cfsroot-signer:sha256:" + fp,
		"cfsroot-upper:LABEL=data:state:fs-uuid=c0ffee00-1234-4567-89ab-0123456789ab",
		"cfsroot-ipe-policy:sha256:" + pol + ":enforce=1",
		"cfsroot-separator",
	}
	out, _, err := runCLI(t, "pcr", "predict", "--image", f.image, "--sig", f.sig, "--trusted", f.cert, "--policy", f.policy,
		"--ipe-enforce", "--upper", "LABEL=data:state", "--upper-uuid", "c0ffee00-1234-4567-89ab-0123456789ab",
		"--bank", "sha1,sha256,sha384,sha512,sm3_256", "--events")
	if err != nil {
		t.Fatal(err)
	}
	var want strings.Builder
	types := []string{"cfsroot-image", "cfsroot-signer", "cfsroot-upper", "cfsroot-ipe-policy", "cfsroot-separator"}
	for i, s := range texts {
		fmt.Fprintf(&want, "event %s %s\n", types[i], s)
	}
	for _, b := range []struct {
		name, flag string
		size       int
	}{{"sha1", "-sha1", 20}, {"sha256", "-sha256", 32}, {"sha384", "-sha384", 48}, {"sha512", "-sha512", 64}, {"sm3_256", "-sm3", 32}} {
		fmt.Fprintf(&want, "15 %s %s\n", b.name, opensslPCR(t, b.flag, b.size, texts))
	}
	if out != want.String() {
		t.Errorf("pcr predict printed\n%s\nindependent tools say\n%s", out, want.String())
	}

	// --signer with the same certificate predicts the same; other names,
	// images and signers predict differently.
	same, _, err := runCLI(t, "pcr", "predict", "--image", f.image, "--signer", f.cert, "--policy", f.policy, "--ipe-enforce",
		"--upper", "LABEL=data:state", "--upper-uuid", "c0ffee00-1234-4567-89ab-0123456789ab", "--bank", "sha256", "--pcr", "7")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "15 sha256 "+strings.TrimPrefix(strings.TrimSpace(same), "7 sha256 ")+"\n") {
		t.Errorf("--signer predicts %q, --sig predicted %q", same, out)
	}
	seen := map[string]string{same: "base"}
	for name, args := range map[string][]string{
		"no upper":     {"--image", f.image, "--signer", f.cert, "--policy", f.policy, "--ipe-enforce"},
		"not enforced": {"--image", f.image, "--signer", f.cert, "--policy", f.policy},
		"no policy":    {"--image", f.image, "--signer", f.cert},
		"renamed":      {"--image", f.image, "--signer", f.cert, "--policy", f.policy, "--name", "other"},
		"pinned":       {"--image", f.image, "--digest", digest, "--policy", f.policy},
		"image":        {"--image", randomFile(t, t.TempDir(), 100), "--signer", f.cert, "--policy", f.policy},
	} {
		o, _, err := runCLI(t, append([]string{"pcr", "predict", "--bank", "sha256", "--pcr", "7"}, args...)...)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if prev, dup := seen[o]; dup {
			t.Errorf("%s predicts the same as %s: %s", name, prev, o)
		}
		seen[o] = name
	}
}

func TestPCRPredictPinned(t *testing.T) {
	dir := t.TempDir()
	img := randomFile(t, dir, 5000)
	d, err := verity.DigestFile(img, verity.Params{})
	if err != nil {
		t.Fatal(err)
	}
	out, _, err := runCLI(t, "pcr", "predict", "--image", img, "--digest", d.String(), "--events", "--bank", "sha256")
	if err != nil || !strings.Contains(out, "event cfsroot-signer cfsroot-signer:pinned-digest\n") {
		t.Errorf("pinned: %q, %v", out, err)
	}
	d.Sum[0] ^= 1
	_, _, err = runCLI(t, "pcr", "predict", "--image", img, "--digest", d.String())
	if err == nil || !strings.Contains(err.Error(), "not the pinned") {
		t.Errorf("wrong pinned digest: %v", err)
	}
}

// TestPCRPredictUpperAndEnforce: --upper/--upper-uuid add the persistent
// upper layer's event, --ipe-enforce the enforce state to the policy event,
// in the order the init measures them; half-given pairs are usage errors.
func TestPCRPredictUpperAndEnforce(t *testing.T) {
	dir := t.TempDir()
	img := randomFile(t, dir, 5000)
	pol := randomFile(t, dir, 300)
	d, err := verity.DigestFile(img, verity.Params{})
	if err != nil {
		t.Fatal(err)
	}
	polData, _ := os.ReadFile(pol)
	sum := sha256.Sum256(polData)
	out, _, err := runCLI(t, "pcr", "predict", "--image", img, "--digest", d.String(), "--events", "--bank", "sha256",
		"--upper", "LABEL=data:state", "--upper-uuid", "C0FFEE00-1234-4567-89AB-0123456789AB", "--policy", pol, "--ipe-enforce")
	if err != nil {
		t.Fatal(err)
	}
	want := "event cfsroot-signer cfsroot-signer:pinned-digest\n" +
		"event cfsroot-upper cfsroot-upper:LABEL=data:state:fs-uuid=c0ffee00-1234-4567-89ab-0123456789ab\n" +
		"event cfsroot-ipe-policy cfsroot-ipe-policy:sha256:" + hex.EncodeToString(sum[:]) + ":enforce=1\n" +
		"event cfsroot-separator cfsroot-separator\n"
	if !strings.Contains(out, want) {
		t.Errorf("predict --events:\n%s\nwant:\n%s", out, want)
	}
	for _, bad := range [][]string{
		{"--upper", "LABEL=data:state"},
		{"--upper-uuid", "c0ffee00-1234-4567-89ab-0123456789ab"},
		{"--upper", "tmpfs", "--upper-uuid", "x"},
		{"--ipe-enforce"},
	} {
		args := append([]string{"pcr", "predict", "--image", img, "--digest", d.String()}, bad...)
		if _, _, err := runCLI(t, args...); err == nil {
			t.Errorf("predict %q accepted", bad)
		}
	}
}

// TestPCRPredictRefusesResettablePCRs: a prediction for PCR 16 or 23 would
// be worthless, since any program can reset them and extend the good
// values itself (issue 12, finding 8); 17-22 belong to dynamic launch.
func TestPCRPredictRefusesResettablePCRs(t *testing.T) {
	dir := t.TempDir()
	img := randomFile(t, dir, 5000)
	d, err := verity.DigestFile(img, verity.Params{})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		pcr  string
		want string
	}{
		{"0", ""}, {"7", ""}, {"15", ""},
		{"16", "reset by any program"}, {"23", "reset by any program"},
		{"17", "dynamic launch"}, {"22", "dynamic launch"},
		{"24", "not between 0 and 23"}, {"-1", "not between 0 and 23"},
	} {
		_, _, err := runCLI(t, "pcr", "predict", "--image", img, "--digest", d.String(), "--bank", "sha256", "--pcr", tc.pcr)
		if tc.want == "" {
			if err != nil {
				t.Errorf("--pcr %s: %v", tc.pcr, err)
			}
			continue
		}
		if _, ok := err.(*usageError); !ok || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("--pcr %s: err = %v, want a usage error saying %q", tc.pcr, err, tc.want)
		}
	}
}

func TestPCRPredictRefusesBadSignature(t *testing.T) {
	f := newPCRFixture(t)
	_, other := opensslKey(t, f.dir, "other")
	_, _, err := runCLI(t, "pcr", "predict", "--image", f.image, "--sig", f.sig, "--trusted", other)
	if err == nil || !strings.Contains(err.Error(), "init would refuse") {
		t.Errorf("untrusted signer: %v", err)
	}
}

func TestPCRUsageErrors(t *testing.T) {
	dir := t.TempDir()
	img := randomFile(t, dir, 10)
	for _, args := range [][]string{
		{"pcr"},
		{"pcr", "frobnicate"},
		{"pcr", "predict"},
		{"pcr", "predict", "--image", img},
		{"pcr", "predict", "--image", img, "--digest", "sha256:00", "--signer", "x"},
		{"pcr", "predict", "--image", img, "--sig", "x"},
		{"pcr", "predict", "--image", img, "--digest", "sha256:00", "--bank", "md5"},
		{"pcr", "predict", "--image", img, "--digest", "sha256:00", "--bank", "0x0027"},
		{"pcr", "predict", "--image", img, "--digest", "sha256:00", "--pcr", "24"},
		{"pcr", "predict", "--image", img, "--digest", "nothex"},
		{"pcr", "predict", img},
		{"pcr", "replay", "a", "b"},
		{"pcr", "replay", "--pcr", "-2", "a"},
	} {
		_, _, err := runCLI(t, args...)
		if _, ok := err.(*usageError); !ok {
			t.Errorf("%q: got %v, want a usage error", args, err)
		}
	}
	if _, _, err := runCLI(t, "pcr", "replay", filepath.Join(dir, "missing.log")); err == nil {
		t.Error("replay of a missing log succeeded")
	}
}

// TestPCRReplayEqualsTPM is the host half of issue 6's VM test: measure an
// image into the TPM simulator as the init does, then `cfsroot pcr replay`
// of the log it wrote and `cfsroot pcr predict` for the same files both give
// the PCR values the TPM holds, on every bank it has.
func TestPCRReplayEqualsTPM(t *testing.T) {
	f := newPCRFixture(t)
	ctx := context.Background()
	m, err := measure.New(ctx, simtpm.Open(t))
	if err != nil {
		t.Fatal(err)
	}
	m.LogPath = filepath.Join(f.dir, "tpm2-measure.log")

	// What the init does with these files.
	d, err := verity.DigestFile(f.image, verity.Params{})
	if err != nil {
		t.Fatal(err)
	}
	ts, err := signature.LoadTrustStore(f.cert)
	if err != nil {
		t.Fatal(err)
	}
	sig, _ := os.ReadFile(f.sig)
	signer, err := signature.Verify(sig, d, ts)
	if err != nil {
		t.Fatal(err)
	}
	policy, _ := os.ReadFile(f.policy)
	evs, err := measure.Events(measure.ImageInfo{Name: "image", Digest: d, Signer: signer, Policy: policy})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.ExtendAll(ctx, evs); err != nil {
		t.Fatal(err)
	}
	got, err := m.Read(ctx, 15)
	if err != nil {
		t.Fatal(err)
	}
	var tpm strings.Builder
	var names []string
	for _, a := range m.Banks() {
		fmt.Fprintf(&tpm, "15 %s %x\n", a, got[a])
		names = append(names, a.String())
	}
	banks := strings.Join(names, ",")

	replayed, stderr, err := runCLI(t, "pcr", "replay", "--strict", "--bank", banks, m.LogPath)
	if err != nil || stderr != "" {
		t.Fatalf("replay: %v %s", err, stderr)
	}
	predicted, _, err := runCLI(t, "pcr", "predict", "--image", f.image, "--sig", f.sig, "--trusted", f.cert, "--policy", f.policy, "--bank", banks)
	if err != nil {
		t.Fatal(err)
	}
	if replayed != tpm.String() || predicted != tpm.String() {
		t.Errorf("TPM has\n%s\nreplay says\n%s\npredict says\n%s", tpm.String(), replayed, predicted)
	}

	// A record whose digest is not the hash of its text is reported.
	log, _ := os.ReadFile(m.LogPath)
	bad := filepath.Join(f.dir, "bad.log")
	os.WriteFile(bad, bytes.Replace(log, []byte("cfsroot-separator\""), []byte("cfsroot-separatoR\""), 1), 0o600)
	if _, _, err := runCLI(t, "pcr", "replay", "--strict", bad); err == nil {
		t.Error("--strict accepted a record whose digest does not match its text")
	}
	if _, stderr, err := runCLI(t, "pcr", "replay", bad); err != nil || !strings.Contains(stderr, "warning") {
		t.Errorf("replay of a mismatching record: %v, stderr %q", err, stderr)
	}
}

// TestPCRPredictRollback: with --floor, predict measures the image's own
// security version and product (written by mkimage) and the floor, as the
// init does; the value is chained with openssl from the texts and the
// fsverity-utils digest. An image below the floor is refused.
func TestPCRPredictRollback(t *testing.T) {
	testutil.RequireTool(t, "fsverity")
	dir := t.TempDir()
	src := filepath.Join(dir, "tree.dump")
	os.WriteFile(src, []byte("/ 4096 40755 2 0 0 0 0.0 - - -\n/etc 4096 40755 2 0 0 0 0.0 - - -\n"), 0o644)
	img := filepath.Join(dir, "prod.cfs")
	if _, stderr, err := runCLI(t, "mkimage", "--from-file", "--security-version", "4", "--product", "app", src, img); err != nil {
		t.Fatalf("%v\n%s", err, stderr)
	}
	_, cert := opensslKey(t, dir, "signer", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256")
	digest := strings.Fields(string(testutil.Run(t, "fsverity", "digest", img)))[0]
	fpOut := string(testutil.Run(t, "openssl", "x509", "-in", cert, "-noout", "-fingerprint", "-sha256"))
	fp := strings.ToLower(strings.ReplaceAll(strings.TrimSpace(fpOut[strings.Index(fpOut, "=")+1:]), ":", ""))
	for _, tc := range []struct {
		args  []string
		texts []string
	}{
		{nil, []string{"cfsroot-image:prod:" + digest, "cfsroot-signer:sha256:" + fp, "cfsroot-separator"}},
		{[]string{"--floor", "3"}, []string{"cfsroot-image:prod:" + digest, "cfsroot-signer:sha256:" + fp,
			"cfsroot-version:app:4", "cfsroot-floor:3:nv=read", "cfsroot-separator"}},
		{[]string{"--floor=4", "--floor-nv", "missing"}, []string{"cfsroot-image:prod:" + digest, "cfsroot-signer:sha256:" + fp,
			"cfsroot-version:app:4", "cfsroot-floor:4:nv=missing", "cfsroot-separator"}},
	} {
		out, _, err := runCLI(t, append([]string{"pcr", "predict", "--image", img, "--signer", cert, "--bank", "sha256"}, tc.args...)...)
		if err != nil {
			t.Fatalf("%v: %v", tc.args, err)
		}
		if want := "15 sha256 " + opensslPCR(t, "-sha256", 32, tc.texts) + "\n"; out != want {
			t.Errorf("%v: predict printed %q, openssl chained %q from %q", tc.args, out, want, tc.texts)
		}
	}
	if _, _, err := runCLI(t, "pcr", "predict", "--image", img, "--signer", cert, "--floor", "5"); err == nil || !strings.Contains(err.Error(), "below the floor 5") {
		t.Errorf("predict with a floor above the image's version: %v", err)
	}
	if _, _, err := runCLI(t, "pcr", "predict", "--image", img, "--signer", cert, "--floor-nv", "read"); err == nil {
		t.Error("--floor-nv without --floor accepted")
	}
}

// TestPCRPredictFsveritySigners: --fsverity-signers DIR adds one event per
// object signer, in file-name order, after the image signer; the texts come
// from openssl's fingerprints and the PCR from openssl's chaining.
func TestPCRPredictFsveritySigners(t *testing.T) {
	f := newPCRFixture(t)
	certs := filepath.Join(f.dir, "fsverity-certs")
	os.MkdirAll(certs, 0o755)
	opensslKey(t, certs, "b-objects", "-newkey", "rsa:2048")
	opensslKey(t, certs, "a-objects", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256")
	for _, k := range []string{"a-objects.key", "b-objects.key"} {
		os.Remove(filepath.Join(certs, k))
	}
	fingerprint := func(cert string) string {
		out := string(testutil.Run(t, "openssl", "x509", "-in", cert, "-noout", "-fingerprint", "-sha256"))
		return strings.ToLower(strings.ReplaceAll(strings.TrimSpace(out[strings.Index(out, "=")+1:]), ":", ""))
	}
	digest := strings.Fields(string(testutil.Run(t, "fsverity", "digest", f.image)))[0]
	texts := []string{
		"cfsroot-image:image:" + digest,
		"cfsroot-signer:sha256:" + fingerprint(f.cert),
		"cfsroot-fsverity-signer:sha256:" + fingerprint(filepath.Join(certs, "a-objects.pem")),
		"cfsroot-fsverity-signer:sha256:" + fingerprint(filepath.Join(certs, "b-objects.pem")),
		"cfsroot-separator",
	}
	out, _, err := runCLI(t, "pcr", "predict", "--image", f.image, "--sig", f.sig, "--trusted", f.cert,
		"--fsverity-signers", certs, "--bank", "sha256", "--events")
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range texts {
		if !strings.Contains(out, " "+s+"\n") {
			t.Errorf("pcr predict lacks event %q:\n%s", s, out)
		}
	}
	if want := "15 sha256 " + opensslPCR(t, "-sha256", 32, texts) + "\n"; !strings.HasSuffix(out, want) {
		t.Errorf("pcr predict printed\n%s\nopenssl chains to %s", out, want)
	}
}
