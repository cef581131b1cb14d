package verity

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cfsroot/cfsroot/internal/testutil"
)

// fsverityDigest asks fsverity-utils, the oracle, for a file's digest.
func fsverityDigest(t *testing.T, path string, args ...string) string {
	t.Helper()
	out := testutil.Run(t, "fsverity", append(append([]string{"digest"}, args...), path)...)
	f := strings.Fields(string(out))
	if len(f) != 2 {
		t.Fatalf("fsverity digest printed %q", out)
	}
	return f[0]
}

func writeRandom(t *testing.T, dir string, size int64) string {
	t.Helper()
	p := filepath.Join(dir, fmt.Sprintf("f%d", size))
	b := make([]byte, size)
	rand.Read(b)
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestDigestMatchesFsverityUtils(t *testing.T) {
	testutil.RequireTool(t, "fsverity")
	dir := t.TempDir()
	salt := []byte("0123456789abcdef0123456789abcdef")
	sizes := []int64{0, 1, 4095, 4096, 4097, 128<<10 - 1, 128 << 10, 128<<10 + 1, 1<<20 + 1}
	tests := []struct {
		name string
		p    Params
		args []string
	}{
		{"default", Params{}, nil},
		{"sha512", Params{Algorithm: SHA512}, []string{"--hash-alg=sha512"}},
		{"salt", Params{Salt: []byte{0xab}}, []string{"--salt=ab"}},
		{"salt32-sha512", Params{Algorithm: SHA512, Salt: salt}, []string{"--hash-alg=sha512", "--salt=" + hex.EncodeToString(salt)}},
		{"block1024", Params{BlockSize: 1024}, []string{"--block-size=1024"}},
		{"block65536", Params{BlockSize: 65536}, []string{"--block-size=65536"}},
		{"block1024-sha512-salt", Params{Algorithm: SHA512, BlockSize: 1024, Salt: salt[:7]}, []string{"--hash-alg=sha512", "--block-size=1024", "--salt=" + hex.EncodeToString(salt[:7])}},
	}
	files := make([]string, len(sizes))
	for i, s := range sizes {
		files[i] = writeRandom(t, dir, s)
	}
	for _, tc := range tests {
		for i, path := range files {
			t.Run(fmt.Sprintf("%s/%d", tc.name, sizes[i]), func(t *testing.T) {
				got, err := DigestFile(path, tc.p)
				if err != nil {
					t.Fatal(err)
				}
				if want := fsverityDigest(t, path, tc.args...); got.String() != want {
					t.Errorf("got %s, fsverity digest says %s", got, want)
				}
			})
		}
	}
}

// TestDigestLargeFile checks a file bigger than 100 MiB, whose Merkle tree has
// three levels of 4 KiB blocks.
func TestDigestLargeFile(t *testing.T) {
	testutil.RequireTool(t, "fsverity")
	if testing.Short() {
		t.Skip("large file skipped in -short mode")
	}
	path := filepath.Join(t.TempDir(), "big")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	chunk := make([]byte, 1<<20)
	rng := mrand.NewChaCha8([32]byte{1})
	for i := 0; i < 101; i++ {
		rng.Read(chunk)
		if _, err := f.Write(chunk); err != nil {
			t.Fatal(err)
		}
	}
	f.Write([]byte("tail"))
	f.Close()
	got, err := DigestFile(path, Params{})
	if err != nil {
		t.Fatal(err)
	}
	if want := fsverityDigest(t, path); got.String() != want {
		t.Errorf("got %s, fsverity digest says %s", got, want)
	}
}

// TestDigestRandomized compares many random sizes and parameters, with the
// content written to the Tree in random pieces.
func TestDigestRandomized(t *testing.T) {
	testutil.RequireTool(t, "fsverity")
	dir := t.TempDir()
	rng := mrand.New(mrand.NewPCG(uint64(os.Getpid()), 42))
	blockSizes := []int{1024, 2048, 4096, 8192, 65536}
	for i := 0; i < 60; i++ {
		var size int64
		switch rng.IntN(3) {
		case 0:
			size = rng.Int64N(10 << 10)
		case 1:
			size = rng.Int64N(600 << 10)
		default:
			size = rng.Int64N(4 << 20)
		}
		p := Params{BlockSize: blockSizes[rng.IntN(len(blockSizes))]}
		args := []string{fmt.Sprintf("--block-size=%d", p.BlockSize)}
		if rng.IntN(2) == 0 {
			p.Algorithm = SHA512
			args = append(args, "--hash-alg=sha512")
		}
		if rng.IntN(3) == 0 {
			p.Salt = make([]byte, 1+rng.IntN(MaxSaltSize))
			rand.Read(p.Salt)
			args = append(args, "--salt="+hex.EncodeToString(p.Salt))
		}
		path := writeRandom(t, dir, size)
		content, _ := os.ReadFile(path)
		tree, err := NewTree(p)
		if err != nil {
			t.Fatal(err)
		}
		for rest := content; len(rest) > 0; {
			n := min(len(rest), 1+rng.IntN(3*p.BlockSize))
			tree.Write(rest[:n])
			rest = rest[n:]
		}
		got := tree.Digest()
		if want := fsverityDigest(t, path, args...); got.String() != want {
			t.Fatalf("size %d params %+v: got %s, fsverity digest says %s", size, p, got, want)
		}
		os.Remove(path)
	}
}

func TestParams(t *testing.T) {
	for _, tc := range []struct {
		p       Params
		wantErr string
	}{
		{Params{}, ""},
		{Params{BlockSize: 512}, "block size 512"},
		{Params{BlockSize: 131072}, "block size 131072"},
		{Params{BlockSize: 3000}, "power of two"},
		{Params{Salt: make([]byte, 33)}, "salt is 33 bytes"},
		{Params{Algorithm: 3}, "unknown fs-verity hash algorithm 3"},
	} {
		_, err := NewTree(tc.p)
		if (err == nil) != (tc.wantErr == "") || (err != nil && !strings.Contains(err.Error(), tc.wantErr)) {
			t.Errorf("NewTree(%+v) = %v, want error containing %q", tc.p, err, tc.wantErr)
		}
	}
}

func TestParseDigest(t *testing.T) {
	h256 := strings.Repeat("ab", 32)
	h512 := strings.Repeat("cd", 64)
	for _, tc := range []struct {
		in      string
		want    string
		wantErr string
	}{
		{"sha256:" + h256, "sha256:" + h256, ""},
		{h256, "sha256:" + h256, ""},
		{strings.ToUpper(h512), "sha512:" + h512, ""},
		{"sha512:" + h256, "", "sha512 digest must be 64 bytes"},
		{"md5:" + h256, "", "unknown hash algorithm"},
		{"zz", "", "not hex"},
		{"abcd", "", "neither"},
	} {
		d, err := ParseDigest(tc.in)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("ParseDigest(%q) error = %v, want %q", tc.in, err, tc.wantErr)
			}
			continue
		}
		if err != nil || d.String() != tc.want {
			t.Errorf("ParseDigest(%q) = %v, %v; want %s", tc.in, d, err, tc.want)
		}
	}
}

// TestFormattedDigest checks the layout against the kernel's struct
// fsverity_formatted_digest and the round trip.
func TestFormattedDigest(t *testing.T) {
	d, _ := ParseDigest("sha256:" + strings.Repeat("01", 32))
	b := d.FormattedDigest()
	want := append([]byte("FSVerity\x01\x00\x20\x00"), d.Sum...)
	if !bytes.Equal(b, want) {
		t.Fatalf("FormattedDigest = %x, want %x", b, want)
	}
	back, err := ParseFormattedDigest(b)
	if err != nil || !back.Equal(d) {
		t.Fatalf("ParseFormattedDigest = %v, %v", back, err)
	}
	for _, bad := range [][]byte{nil, []byte("FSVerity"), b[:len(b)-1], append([]byte("XSVerity"), b[8:]...)} {
		if _, err := ParseFormattedDigest(bad); err == nil {
			t.Errorf("ParseFormattedDigest(%x) accepted", bad)
		}
	}
}

// TestMeasureWithoutVerity checks the error on a filesystem without
// fs-verity (the host's /tmp here); the VM tests cover a real one.
func TestMeasureWithoutVerity(t *testing.T) {
	path := writeRandom(t, t.TempDir(), 10)
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	_, err = Measure(f)
	if err == nil {
		testutil.Unavailable(t, "fs-verity is enabled on a fresh file in %s, so the not-enabled error cannot be shown here: run the tests with TMPDIR on a filesystem without fs-verity", t.TempDir())
	}
	if !IsNotSupported(err) && !strings.Contains(err.Error(), "not enabled") {
		t.Errorf("Measure error %q names neither missing support nor missing enablement", err)
	}
}

func BenchmarkDigest(b *testing.B) {
	for _, alg := range []Algorithm{SHA256, SHA512} {
		b.Run(alg.String(), func(b *testing.B) {
			data := make([]byte, 64<<20)
			rand.Read(data)
			b.SetBytes(int64(len(data)))
			for b.Loop() {
				if _, err := DigestReader(bytes.NewReader(data), Params{Algorithm: alg}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func TestTreeFinishes(t *testing.T) {
	tree, _ := NewTree(Params{})
	tree.Write([]byte("hello"))
	d1 := tree.Digest()
	if _, err := tree.Write([]byte("more")); err == nil {
		t.Error("Write after Digest succeeded")
	}
	if d2 := tree.Digest(); !d1.Equal(d2) {
		t.Errorf("second Digest %s differs from first %s", d2, d1)
	}
	want, _ := DigestReader(strings.NewReader("hello"), Params{})
	if !d1.Equal(want) {
		t.Errorf("Tree digest %s, DigestReader %s", d1, want)
	}
}
