package main

import (
	"bytes"
	"crypto/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cfsroot/cfsroot/internal/testutil"
)

// opensslKey makes a key and self-signed certificate with openssl, as a
// user would, and returns their paths.
func opensslKey(t *testing.T, dir, name string, keyArgs ...string) (key, cert string) {
	t.Helper()
	testutil.RequireTool(t, "openssl")
	key = filepath.Join(dir, name+".key")
	cert = filepath.Join(dir, name+".pem")
	args := append([]string{"req", "-x509", "-nodes", "-days", "30", "-subj", "/CN=" + name, "-keyout", key, "-out", cert}, keyArgs...)
	testutil.Run(t, "openssl", args...)
	return key, cert
}

func runCLI(t *testing.T, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	var o, e bytes.Buffer
	err = run(args, &o, &e)
	return o.String(), e.String(), err
}

func randomFile(t *testing.T, dir string, size int) string {
	t.Helper()
	p := filepath.Join(dir, "image.cfs")
	b := make([]byte, size)
	rand.Read(b)
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

var testKeys = []struct {
	name string
	args []string
}{
	{"rsa2048", []string{"-newkey", "rsa:2048"}},
	{"rsa4096", []string{"-newkey", "rsa:4096"}},
	{"p256", []string{"-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"}},
	{"p384", []string{"-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-384"}},
}

// TestFsveritySignVerifiesWithCfsroot: signatures by fsverity-utils verify.
func TestFsveritySignVerifiesWithCfsroot(t *testing.T) {
	testutil.RequireTool(t, "fsverity")
	dir := t.TempDir()
	file := randomFile(t, dir, 300000)
	for _, k := range testKeys {
		for _, alg := range []string{"sha256", "sha512"} {
			t.Run(k.name+"/"+alg, func(t *testing.T) {
				key, cert := opensslKey(t, dir, k.name, k.args...)
				sig := filepath.Join(dir, k.name+alg+".fsverity.sig")
				testutil.Run(t, "fsverity", "sign", "--hash-alg="+alg, "--key="+key, "--cert="+cert, file, sig)
				out, _, err := runCLI(t, "verify", "--hash-alg", alg, "--trusted", cert, "--sig", sig, file)
				if err != nil {
					t.Fatal(err)
				}
				want := string(testutil.Run(t, "fsverity", "digest", "--hash-alg="+alg, file))
				if !strings.Contains(out, "digest: "+strings.Fields(want)[0]+"\n") || !strings.Contains(out, "signer: CN="+k.name+"\n") {
					t.Errorf("verify printed %q", out)
				}
			})
		}
	}
}

// TestCfsrootSignVerifiesWithOpenSSL: our signatures verify with openssl
// smime and cms over the formatted digest that fsverity-utils prints, and RSA
// signatures are byte-identical to fsverity sign's.
func TestCfsrootSignVerifiesWithOpenSSL(t *testing.T) {
	testutil.RequireTool(t, "fsverity")
	dir := t.TempDir()
	file := randomFile(t, dir, 5000)
	for _, k := range testKeys {
		for _, alg := range []string{"sha256", "sha512"} {
			t.Run(k.name+"/"+alg, func(t *testing.T) {
				key, cert := opensslKey(t, dir, k.name, k.args...)
				sig := filepath.Join(dir, k.name+alg+".sig")
				if _, _, err := runCLI(t, "sign", "--hash-alg", alg, "--key", key, "--cert", cert, file, sig); err != nil {
					t.Fatal(err)
				}
				formatted := filepath.Join(dir, alg+".formatted")
				hexDigest := strings.TrimSpace(string(testutil.Run(t, "fsverity", "digest", "--for-builtin-sig", "--compact", "--hash-alg="+alg, file)))
				writeHex(t, formatted, hexDigest)
				for _, tool := range []string{"smime", "cms"} {
					testutil.Run(t, "openssl", tool, "-verify", "-binary", "-inform", "der", "-in", sig,
						"-content", formatted, "-certfile", cert, "-noverify", "-out", os.DevNull)
				}
				if strings.HasPrefix(k.name, "rsa") {
					ref := filepath.Join(dir, k.name+alg+".fsverity.sig")
					testutil.Run(t, "fsverity", "sign", "--hash-alg="+alg, "--key="+key, "--cert="+cert, file, ref)
					a, _ := os.ReadFile(sig)
					b, _ := os.ReadFile(ref)
					if !bytes.Equal(a, b) {
						t.Errorf("RSA signature differs from fsverity sign's")
					}
				}
			})
		}
	}
}

func writeHex(t *testing.T, path, h string) {
	t.Helper()
	cmd := exec.Command("xxd", "-r", "-p")
	cmd.Stdin = strings.NewReader(h)
	out, err := cmd.Output()
	if err != nil {
		// xxd is part of vim; decode in Go rather than depend on it.
		out = nil
		for i := 0; i+1 < len(h); i += 2 {
			var b byte
			for _, c := range h[i : i+2] {
				b <<= 4
				switch {
				case c >= '0' && c <= '9':
					b |= byte(c - '0')
				case c >= 'a' && c <= 'f':
					b |= byte(c - 'a' + 10)
				}
			}
			out = append(out, b)
		}
	}
	if err := os.WriteFile(path, out, 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestVerifyErrors(t *testing.T) {
	dir := t.TempDir()
	file := randomFile(t, dir, 1000)
	key, cert := opensslKey(t, dir, "signer", "-newkey", "rsa:2048")
	_, otherCert := opensslKey(t, dir, "other", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256")
	sig := file + ".sig"
	if _, _, err := runCLI(t, "sign", "--key", key, "--cert", cert, file, sig); err != nil {
		t.Fatal(err)
	}
	good, _ := os.ReadFile(sig)
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		os.WriteFile(p, b, 0o644)
		return p
	}
	sig512 := filepath.Join(dir, "512.sig")
	if _, _, err := runCLI(t, "sign", "--hash-alg", "sha512", "--key", key, "--cert", cert, file, sig512); err != nil {
		t.Fatal(err)
	}
	otherFile := write("other", []byte("other content"))
	emptyDir := filepath.Join(dir, "empty")
	os.Mkdir(emptyDir, 0o755)
	unreadable := filepath.Join(dir, "missing-image")

	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"valid", []string{"--trusted", cert, file}, ""},
		{"truncated", []string{"--trusted", cert, "--sig", write("t.sig", good[:40]), file}, "not a valid PKCS#7 signature"},
		{"garbage", []string{"--trusted", cert, "--sig", write("g.sig", []byte("garbage")), file}, "not a valid PKCS#7 signature"},
		{"other digest", []string{"--trusted", cert, "--sig", sig, otherFile}, "signature does not match the digest"},
		{"sha512 for sha256", []string{"--trusted", cert, "--sig", sig512, file}, "made with sha512"},
		{"untrusted", []string{"--trusted", otherCert, "--sig", sig, file}, "signer is not in the trust store"},
		{"empty trust store", []string{"--trusted", emptyDir, "--sig", sig, file}, "trust store holds no certificates"},
		{"unreadable file", []string{"--trusted", cert, "--sig", sig, unreadable}, "no such file"},
		{"missing signature", []string{"--trusted", cert, otherFile}, "read signature"},
		{"no trusted flag", []string{file}, "--trusted is required"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, _, err := runCLI(t, append([]string{"verify"}, tc.args...)...)
			if tc.want == "" {
				if err != nil || !strings.Contains(out, "signer: CN=signer") {
					t.Fatalf("valid signature refused: %v %q", err, out)
				}
				return
			}
			if err == nil {
				t.Fatalf("accepted: %q", out)
			}
			if out != "" {
				t.Errorf("printed %q on failure", out)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not say %q", err, tc.want)
			}
		})
	}
}

func TestSignRefusesBadKeys(t *testing.T) {
	dir := t.TempDir()
	file := randomFile(t, dir, 10)
	weakKey, weakCert := opensslKey(t, dir, "weak", "-newkey", "rsa:1024")
	_, otherCert := opensslKey(t, dir, "other", "-newkey", "rsa:2048")
	goodKey, _ := opensslKey(t, dir, "good", "-newkey", "rsa:2048")
	sig := filepath.Join(dir, "out.sig")
	for _, tc := range []struct {
		name, key, cert, want string
	}{
		{"rsa1024", weakKey, weakCert, "1024 bits"},
		{"key and cert differ", goodKey, otherCert, "does not belong"},
		{"cert is not a cert", goodKey, goodKey, "no PEM CERTIFICATE"},
		{"key is not a key", otherCert, otherCert, "no PEM private key"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := runCLI(t, "sign", "--key", tc.key, "--cert", tc.cert, file, sig)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %v, want %q", err, tc.want)
			}
			if _, err := os.Stat(sig); err == nil {
				t.Errorf("a signature file was written")
			}
		})
	}
}
