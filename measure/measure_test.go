package measure

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/cfsroot/cfsroot/internal/testutil"
	"github.com/cfsroot/cfsroot/internal/testutil/simtpm"
	"github.com/cfsroot/cfsroot/measure/eventlog"
	"github.com/cfsroot/cfsroot/rootfs/verity"
)

// openSim starts the TPM simulator (one at a time: it is a global resource).
func openSim(t *testing.T) transport.TPM {
	t.Helper()
	return simtpm.Open(t)
}

func newTestMeasurer(t *testing.T, tpm transport.TPM) *Measurer {
	t.Helper()
	m, err := New(context.Background(), tpm)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	m.LogPath = filepath.Join(t.TempDir(), "run/log/systemd/tpm2-measure.log")
	m.backoff, m.backoffMax = time.Millisecond, 2*time.Millisecond
	return m
}

func testCert(t testing.TB) *x509.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(7),
		Subject:      pkix.Name{CommonName: "cfsroot measure test"},
		NotBefore:    time.Unix(0, 0),
		NotAfter:     time.Unix(1<<32, 0),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func testImage(t testing.TB, name string, policy []byte) ImageInfo {
	sum := sha256.Sum256([]byte("image " + name))
	return ImageInfo{
		Name:   name,
		Digest: verity.Digest{Algorithm: verity.SHA256, Sum: sum[:]},
		Signer: testCert(t),
		Policy: policy,
	}
}

func mustEvents(t testing.TB, img ImageInfo) []Event {
	t.Helper()
	evs, err := Events(img)
	if err != nil {
		t.Fatalf("Events: %v", err)
	}
	return evs
}

func checkPCR(t *testing.T, m *Measurer, want map[Alg][]byte) {
	t.Helper()
	got, err := m.Read(context.Background(), m.PCR)
	if err != nil {
		t.Fatalf("Read: %v", err)
	}
	for _, a := range m.Banks() {
		if !bytes.Equal(got[a], want[a]) {
			t.Errorf("PCR %d bank %s: TPM has %x, predicted %x", m.PCR, a, got[a], want[a])
		}
	}
}

// TestExtendEqualsPredict is the acceptance test: after measuring an image,
// every active bank of the simulator holds what Predict computes, and
// replaying the event log gives the same values.
func TestExtendEqualsPredict(t *testing.T) {
	m := newTestMeasurer(t, openSim(t))
	banks := m.Banks()
	t.Logf("simulator banks with PCR %d: %v", m.PCR, banks)
	if len(banks) < 2 {
		t.Fatalf("simulator has banks %v; want at least sha1 and sha256 to test more than one", banks)
	}
	evs := mustEvents(t, testImage(t, "root", []byte("signed policy bytes")))
	if err := m.ExtendAll(context.Background(), evs); err != nil {
		t.Fatalf("ExtendAll: %v", err)
	}
	want, err := Predict(evs, banks)
	if err != nil {
		t.Fatal(err)
	}
	checkPCR(t, m, want)

	recs, err := eventlog.ParseFile(m.LogPath)
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != len(evs) {
		t.Fatalf("log has %d records, want %d", len(recs), len(evs))
	}
	for i, r := range recs {
		if r.PCR != uint32(m.PCR) || r.Content == nil || r.Content.String != evs[i].Data || r.Content.EventType != evs[i].Type {
			t.Errorf("record %d = %+v %+v, want PCR %d %+v", i, r, r.Content, m.PCR, evs[i])
		}
		if len(r.Digests) != len(banks) {
			t.Errorf("record %d has %d digests, want one per bank (%v)", i, len(r.Digests), banks)
		}
	}
	if err := VerifyRecords(recs); err != nil {
		t.Error(err)
	}
	replayed, err := Replay(recs)
	if err != nil {
		t.Fatal(err)
	}
	checkPCR(t, m, replayed[uint32(m.PCR)])
	if st, err := os.Stat(m.LogPath); err != nil || st.Mode() != 0o600 {
		t.Errorf("log mode = %v (%v), want 0600 and no sticky bit", st.Mode(), err)
	}

	// A different image must give a different value on every bank.
	other, err := Predict(mustEvents(t, testImage(t, "other", nil)), banks)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range banks {
		if bytes.Equal(other[a], want[a]) {
			t.Errorf("bank %s: a different image predicts the same PCR value", a)
		}
	}
}

// TestTPMHashesUnknownBanks covers banks cfsroot cannot hash itself: the TPM
// hashes the event (TPM2_Hash), and the result still equals Predict.
func TestTPMHashesUnknownBanks(t *testing.T) {
	m := newTestMeasurer(t, openSim(t))
	m.PCR = 16
	local := SHA256
	m.localHash = func(a Alg, data []byte) []byte {
		if a != local {
			return nil // pretend only SHA-256 is known
		}
		return digest(a, data)
	}
	evs := mustEvents(t, testImage(t, "root", nil))
	if err := m.ExtendAll(context.Background(), evs); err != nil {
		t.Fatalf("ExtendAll: %v", err)
	}
	want, err := Predict(evs, m.Banks())
	if err != nil {
		t.Fatal(err)
	}
	checkPCR(t, m, want)
}

// faultTPM answers chosen commands with error codes, or never, before (or
// instead of) passing them to the real TPM behind it.
type faultTPM struct {
	tpm   transport.TPM
	cc    tpm2.TPMCC
	rcs   []tpm2.TPMRC  // answered in turn, then pass through
	hang  chan struct{} // when set, the command blocks until it is closed
	calls int
}

func (f *faultTPM) Send(cmd []byte) ([]byte, error) {
	if len(cmd) >= 10 && tpm2.TPMCC(binary.BigEndian.Uint32(cmd[6:10])) == f.cc {
		f.calls++
		if f.hang != nil {
			<-f.hang
			return nil, errors.New("released")
		}
		if len(f.rcs) > 0 {
			rc := f.rcs[0]
			f.rcs = f.rcs[1:]
			rsp := []byte{0x80, 0x01, 0, 0, 0, 10, 0, 0, 0, 0}
			binary.BigEndian.PutUint32(rsp[6:], uint32(rc))
			return rsp, nil
		}
	}
	return f.tpm.Send(cmd)
}

func TestTPMFaults(t *testing.T) {
	ev := Event{Type: "test", Data: "test event"}
	t.Run("retry warnings", func(t *testing.T) {
		f := &faultTPM{tpm: openSim(t), cc: tpm2.TPMCCPCRExtend, rcs: []tpm2.TPMRC{tpm2.TPMRCRetry, tpm2.TPMRCYielded, tpm2.TPMRCTesting}}
		m := newTestMeasurer(t, f)
		if err := m.Extend(context.Background(), ev); err != nil {
			t.Fatalf("Extend after 3 warnings: %v", err)
		}
		if f.calls != 4 {
			t.Errorf("PCR_Extend sent %d times, want 4", f.calls)
		}
		want, _ := Predict([]Event{ev}, m.Banks())
		checkPCR(t, m, want)
	})
	t.Run("bounded retries", func(t *testing.T) {
		f := &faultTPM{tpm: openSim(t), cc: tpm2.TPMCCPCRExtend}
		for range 100 {
			f.rcs = append(f.rcs, tpm2.TPMRCRetry)
		}
		m := newTestMeasurer(t, f)
		m.attempts = 5
		err := m.Extend(context.Background(), ev)
		var te *Error
		if !errors.As(err, &te) || !errors.Is(err, tpm2.TPMRCRetry) || IsNoTPM(err) {
			t.Fatalf("Extend = %v, want a TPM *Error wrapping TPM_RC_RETRY", err)
		}
		if f.calls != 5 {
			t.Errorf("PCR_Extend sent %d times, want 5", f.calls)
		}
		checkLogUsable(t, m.LogPath, 0)
	})
	t.Run("failure is not retried", func(t *testing.T) {
		f := &faultTPM{tpm: openSim(t), cc: tpm2.TPMCCPCRExtend, rcs: []tpm2.TPMRC{tpm2.TPMRCFailure}}
		m := newTestMeasurer(t, f)
		err := m.Extend(context.Background(), ev)
		if !errors.Is(err, tpm2.TPMRCFailure) || f.calls != 1 {
			t.Fatalf("Extend = %v after %d calls, want TPM_RC_FAILURE after 1", err, f.calls)
		}
		if !strings.Contains(err.Error(), "extend PCR 15") {
			t.Errorf("error %q does not say what failed", err)
		}
		// The TPM refused, so nothing was extended and the log stays usable.
		checkLogUsable(t, m.LogPath, 0)
		if err := m.Extend(context.Background(), ev); err != nil {
			t.Fatalf("Extend after a refused one: %v", err)
		}
		checkLogUsable(t, m.LogPath, 1)
	})
	t.Run("timeout", func(t *testing.T) {
		f := &faultTPM{tpm: openSim(t), cc: tpm2.TPMCCPCRExtend, hang: make(chan struct{})}
		defer close(f.hang)
		m := newTestMeasurer(t, f)
		m.Timeout = 50 * time.Millisecond
		start := time.Now()
		err := m.Extend(context.Background(), ev)
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Extend on a hung TPM = %v, want a deadline error", err)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("Extend took %v with a 50ms timeout", d)
		}
		// The TPM is abandoned, and the log marked as not matching it.
		if _, err := m.Read(context.Background(), 15); err == nil {
			t.Error("Read on an abandoned TPM succeeded")
		}
		if _, err := eventlog.OpenWriter(m.LogPath); !errors.Is(err, eventlog.ErrAborted) {
			t.Errorf("OpenWriter after an interrupted extend = %v, want ErrAborted", err)
		}
		err = m.Extend(context.Background(), ev)
		if err == nil {
			t.Fatal("Extend on an abandoned TPM succeeded")
		}
	})
	t.Run("caller context", func(t *testing.T) {
		m := newTestMeasurer(t, openSim(t))
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if err := m.Extend(ctx, ev); !errors.Is(err, context.Canceled) {
			t.Fatalf("Extend with a canceled context = %v", err)
		}
	})
}

// checkLogUsable checks the log has n records and is not marked pending.
func checkLogUsable(t *testing.T, path string, n int) {
	t.Helper()
	recs, err := eventlog.ParseFile(path)
	if err != nil && !(n == 0 && errors.Is(err, os.ErrNotExist)) {
		t.Fatal(err)
	}
	if len(recs) != n {
		t.Errorf("log has %d records, want %d", len(recs), n)
	}
	if st, err := os.Stat(path); err == nil && st.Mode()&os.ModeSticky != 0 {
		t.Errorf("log left marked pending (mode %v)", st.Mode())
	}
}

func TestLogFailureStillExtends(t *testing.T) {
	m := newTestMeasurer(t, openSim(t))
	// A directory where the log should be: the log cannot be opened.
	if err := os.MkdirAll(m.LogPath, 0o755); err != nil {
		t.Fatal(err)
	}
	evs := mustEvents(t, testImage(t, "root", nil))
	err := m.ExtendAll(context.Background(), evs)
	var le *LogError
	if !errors.As(err, &le) {
		t.Fatalf("ExtendAll with an unwritable log = %v, want *LogError", err)
	}
	want, _ := Predict(evs, m.Banks())
	checkPCR(t, m, want)
}

func TestOpenNoTPM(t *testing.T) {
	dir := t.TempDir()
	_, err := Open(context.Background(), filepath.Join(dir, "tpmrm0"))
	if !IsNoTPM(err) {
		t.Errorf("Open(missing) = %v, want IsNoTPM", err)
	}
	regular := filepath.Join(dir, "file")
	os.WriteFile(regular, nil, 0o600)
	_, err = Open(context.Background(), regular)
	if err == nil || IsNoTPM(err) {
		t.Errorf("Open(regular file) = %v, want a TPM failure, not IsNoTPM", err)
	}
	// A device that is not a TPM: opening works, the first command fails.
	_, err = Open(context.Background(), "/dev/null")
	var te *Error
	if !errors.As(err, &te) || IsNoTPM(err) {
		t.Errorf("Open(/dev/null) = %v, want a TPM *Error", err)
	}
	saved := DefaultDevices
	defer func() { DefaultDevices = saved }()
	DefaultDevices = []string{filepath.Join(dir, "a"), filepath.Join(dir, "b")}
	if _, err := Open(context.Background(), ""); !IsNoTPM(err) {
		t.Errorf("Open(\"\") without devices = %v, want IsNoTPM", err)
	}
}

// TestSystemdMachineIDExample replays systemd's own check of its log and PCR
// (test/units/TEST-70-TPM2.pcrextend.sh, "Let's measure the machine ID"):
// the same event, the same openssl and jq commands, against our Measurer.
func TestSystemdMachineIDExample(t *testing.T) {
	openssl := testutil.RequireTool(t, "openssl")
	jq := testutil.RequireTool(t, "jq")
	m := newTestMeasurer(t, openSim(t))
	old, err := m.Read(context.Background(), 15)
	if err != nil {
		t.Fatal(err)
	}
	const word = "machine-id:994013bf23864ee7992eab39a96dd3bb"
	if err := m.Extend(context.Background(), Event{Type: "machine-id", Data: word}); err != nil {
		t.Fatal(err)
	}
	now, err := m.Read(context.Background(), 15)
	if err != nil {
		t.Fatal(err)
	}
	// diff newpcr15 <(cat oldpcr15 <(echo -n WORD | openssl dgst -binary -sha256) | openssl dgst -binary -sha256)
	d := pipe(t, []byte(word), openssl, "dgst", "-binary", "-sha256")
	if want := pipe(t, append(old[SHA256], d...), openssl, "dgst", "-binary", "-sha256"); !bytes.Equal(now[SHA256], want) {
		t.Errorf("PCR 15 = %x, openssl says %x", now[SHA256], want)
	}
	// test "$(jq --seq --slurp ".[0].pcr" <log)" == "$(printf '\x1e15')"
	log, err := os.ReadFile(m.LogPath)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimRight(string(pipe(t, log, jq, "--seq", "--slurp", ".[0].pcr")), "\n"); got != "\x1e15" {
		t.Errorf("jq .[0].pcr = %q, want \"\\x1e15\"", got)
	}
	// DIGEST_EXPECTED="$(echo -n WORD | openssl dgst -hex -sha256 -r)"
	// DIGEST_CURRENT="$(jq --seq --slurp --raw-output ".[0].digests[] | select(.hashAlg == \"sha256\").digest" <log) *stdin"
	want := strings.TrimSpace(string(pipe(t, []byte(word), openssl, "dgst", "-hex", "-sha256", "-r")))
	got := strings.TrimSpace(string(pipe(t, log, jq, "--seq", "--slurp", "--raw-output", `.[0].digests[] | select(.hashAlg == "sha256").digest`))) + " *stdin"
	if got != want {
		t.Errorf("log digest %q, openssl says %q", got, want)
	}
	// jq reads the whole record as systemd wrote it.
	typ := strings.TrimSpace(string(pipe(t, log, jq, "--seq", "--slurp", "--raw-output", `.[0] | .content_type + " " + .content.eventType + " " + .content.string`)))
	if typ != "systemd machine-id "+word {
		t.Errorf("jq sees %q", typ)
	}
}

func pipe(t *testing.T, stdin []byte, name string, args ...string) []byte {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Stdin = bytes.NewReader(stdin)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, stderr.String())
	}
	return out
}

// TestPredictAgainstOpenSSL recomputes the PCR chain with openssl alone:
// PCR = H(PCR || H(event)) from zeros, for every bank cfsroot computes.
func TestPredictAgainstOpenSSL(t *testing.T) {
	openssl := testutil.RequireTool(t, "openssl")
	img := testImage(t, "root.v2_x86-64", []byte("policy"))
	evs := mustEvents(t, img)
	got, err := Predict(evs, KnownAlgs)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		alg  Alg
		flag string
	}{{SHA1, "-sha1"}, {SHA256, "-sha256"}, {SHA384, "-sha384"}, {SHA512, "-sha512"}, {SM3, "-sm3"}} {
		pcr := make([]byte, tc.alg.Size())
		for _, ev := range evs {
			d := pipe(t, []byte(ev.Data), openssl, "dgst", "-binary", tc.flag)
			pcr = pipe(t, append(pcr, d...), openssl, "dgst", "-binary", tc.flag)
		}
		if !bytes.Equal(got[tc.alg], pcr) {
			t.Errorf("%s: Predict = %x, openssl = %x", tc.alg, got[tc.alg], pcr)
		}
	}
	// The signer fingerprint is what openssl calls the certificate's
	// SHA-256 fingerprint.
	pem := "-----BEGIN CERTIFICATE-----\n" + wrap64(img.Signer.Raw) + "-----END CERTIFICATE-----\n"
	out := string(pipe(t, []byte(pem), openssl, "x509", "-noout", "-fingerprint", "-sha256"))
	fp := strings.ToLower(strings.ReplaceAll(strings.TrimSpace(out[strings.Index(out, "=")+1:]), ":", ""))
	if evs[1].Data != "cfsroot-signer:sha256:"+fp {
		t.Errorf("signer event %q, openssl fingerprint %s", evs[1].Data, fp)
	}
	// The policy digest is the SHA-256 of the file's bytes.
	if want := strings.Fields(string(pipe(t, img.Policy, openssl, "dgst", "-sha256", "-r")))[0]; evs[2].Data != "cfsroot-ipe-policy:sha256:"+want+":enforce=0" {
		t.Errorf("policy event %q, openssl says %s", evs[2].Data, want)
	}
}

func wrap64(der []byte) string {
	var b strings.Builder
	s := base64.StdEncoding.EncodeToString(der)
	for len(s) > 64 {
		b.WriteString(s[:64] + "\n")
		s = s[64:]
	}
	return b.String() + s + "\n"
}

func TestEvents(t *testing.T) {
	sum, _ := hex.DecodeString("2f3e0b1b6a6b1b7e0e3f2d1c0b0a09080706050403020100ffeeddccbbaa9988")
	d := verity.Digest{Algorithm: verity.SHA256, Sum: sum}
	cert := testCert(t)
	fp := sha256.Sum256(cert.Raw)
	pol := sha256.Sum256([]byte("p"))
	evs, err := Events(ImageInfo{Name: "root-1.2", Digest: d, Signer: cert, Policy: []byte("p"), IPEEnforce: true,
		Upper: &Upper{Spec: "LABEL=data:state/root", FSUUID: "c0ffee00-1234-4567-89ab-0123456789ab"}})
	if err != nil {
		t.Fatal(err)
	}
	want := []Event{
		{"cfsroot-image", "cfsroot-image:root-1.2:sha256:2f3e0b1b6a6b1b7e0e3f2d1c0b0a09080706050403020100ffeeddccbbaa9988"},
		{"cfsroot-signer", "cfsroot-signer:sha256:" + hex.EncodeToString(fp[:])},
		{"cfsroot-upper", "cfsroot-upper:LABEL=data:state/root:fs-uuid=c0ffee00-1234-4567-89ab-0123456789ab"},
		{"cfsroot-ipe-policy", "cfsroot-ipe-policy:sha256:" + hex.EncodeToString(pol[:]) + ":enforce=1"},
		{"cfsroot-separator", "cfsroot-separator"},
	}
	if len(evs) != len(want) {
		t.Fatalf("Events = %q, want %q", evs, want)
	}
	for i := range want {
		if evs[i] != want[i] {
			t.Errorf("event %d = %q, want %q", i, evs[i], want[i])
		}
	}
	evs, err = Events(ImageInfo{Name: "root", Digest: d, Signer: cert, Rollback: &RollbackInfo{Version: 3, Product: "appliance", Floor: 2, NV: "read"}})
	if err != nil || len(evs) != 5 || evs[2] != (Event{"cfsroot-version", "cfsroot-version:appliance:3"}) ||
		evs[3] != (Event{"cfsroot-floor", "cfsroot-floor:2:nv=read"}) || evs[4] != Separator() {
		t.Errorf("with rollback: %q, %v", evs, err)
	}
	for _, r := range []RollbackInfo{{Product: "a:b", NV: "off"}, {NV: "maybe"}} {
		if _, err := Events(ImageInfo{Name: "root", Digest: d, Pinned: true, Rollback: &r}); err == nil {
			t.Errorf("Events accepted rollback info %+v", r)
		}
	}
	evs, err = Events(ImageInfo{Name: "root", Digest: d, Pinned: true})
	if err != nil || len(evs) != 3 || evs[1].Data != "cfsroot-signer:pinned-digest" || evs[2] != Separator() {
		t.Errorf("pinned, no policy: %q, %v", evs, err)
	}
	for _, bad := range []ImageInfo{
		{Name: "", Digest: d, Pinned: true},
		{Name: "a:b", Digest: d, Pinned: true},
		{Name: "a/b", Digest: d, Pinned: true},
		{Name: "a b", Digest: d, Pinned: true},
		{Name: strings.Repeat("a", 256), Digest: d, Pinned: true},
		{Name: "root", Digest: d},
		{Name: "root", Digest: d, Pinned: true, Signer: cert},
		{Name: "root", Digest: verity.Digest{Algorithm: verity.SHA256, Sum: sum[:5]}, Pinned: true},
	} {
		if _, err := Events(bad); err == nil {
			t.Errorf("Events(%+v) accepted", bad)
		}
	}
}

func TestFailureEvents(t *testing.T) {
	for step, want := range map[string]string{
		"verify:default": "cfsroot-failure:verify:default",
		"":               "cfsroot-failure:unknown",
		"a b/\x00\xff":   "cfsroot-failure:a_b___",
	} {
		if got := FailureEvent(step); got.Data != want || got.Type != EventFailure || got.Check() != nil {
			t.Errorf("FailureEvent(%q) = %q, want %q", step, got.Data, want)
		}
	}
	pol := sha256.Sum256([]byte("p"))
	if got := PolicyFailedEvent([]byte("p")); got.Data != "cfsroot-ipe-failed:sha256:"+hex.EncodeToString(pol[:]) {
		t.Errorf("PolicyFailedEvent = %q", got.Data)
	}
}

func TestEventCheck(t *testing.T) {
	for _, tc := range []struct {
		data string
		ok   bool
	}{
		{"x", true},
		{"", false},
		{"a\x00b", false},
		{"\xff", false},
		{strings.Repeat("a", MaxEventSize), true},
		{strings.Repeat("a", MaxEventSize+1), false},
	} {
		if err := (Event{Type: "t", Data: tc.data}).Check(); (err == nil) != tc.ok {
			t.Errorf("Check(%.10q) = %v, want ok=%v", tc.data, err, tc.ok)
		}
	}
}

func TestAlgNames(t *testing.T) {
	for _, a := range append(KnownAlgs, Alg(0x0027)) {
		b, err := ParseAlg(a.String())
		if err != nil || b != a {
			t.Errorf("ParseAlg(%q) = %v, %v", a.String(), b, err)
		}
	}
	if _, err := ParseAlgs("sha256,sha256"); err == nil {
		t.Error("ParseAlgs accepted a duplicate")
	}
	if _, err := ParseAlg("md5"); err == nil {
		t.Error("ParseAlg accepted md5")
	}
}

// TestNoCgo keeps the init static: the non-test dependency graph of the
// packages the init links must not contain cgo. The detector is checked on
// a package known to use cgo, so the test cannot pass vacuously.
func TestNoCgo(t *testing.T) {
	root := testutil.RepoRoot(t)
	goTool := testutil.GoTool()
	deps := func(cgo string, pkgs ...string) map[string]bool {
		cmd := exec.Command(goTool, append([]string{"list", "-deps"}, pkgs...)...)
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CGO_ENABLED="+cgo)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("go list -deps %v: %v\n%s", pkgs, err, out)
		}
		set := map[string]bool{}
		for _, p := range strings.Fields(string(out)) {
			set[p] = true
		}
		return set
	}
	if d := deps("1", "github.com/google/go-tpm-tools/simulator"); !d["C"] && !d["runtime/cgo"] {
		t.Fatal("the cgo detector does not see cgo in go-tpm-tools/simulator")
	}
	pkgs := []string{"./measure/..."}
	if _, err := os.Stat(filepath.Join(root, "init")); err == nil {
		pkgs = append(pkgs, "./init")
	}
	d := deps("0", pkgs...)
	if d["C"] || d["runtime/cgo"] {
		t.Errorf("%v depend on cgo", pkgs)
	}
	if !d["github.com/google/go-tpm/tpm2"] {
		t.Errorf("go list -deps %v did not list go-tpm; the check looked at the wrong packages", pkgs)
	}
}

// BenchmarkExtend measures one Extend (hash on every bank, TPM2_PCR_Extend,
// locked log append with two fsyncs) on the simulator.
func BenchmarkExtend(b *testing.B) {
	m, err := New(context.Background(), simtpm.Open(b))
	if err != nil {
		b.Fatal(err)
	}
	for _, logged := range []bool{false, true} {
		name := "nolog"
		m.LogPath = ""
		if logged {
			name = "log"
			m.LogPath = filepath.Join(b.TempDir(), "tpm2-measure.log")
		}
		b.Run(name, func(b *testing.B) {
			ev := Separator()
			for b.Loop() {
				if err := m.Extend(context.Background(), ev); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
