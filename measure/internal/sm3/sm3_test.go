package sm3

import (
	"bytes"
	"encoding/hex"
	"math/rand"
	"os/exec"
	"strings"
	"testing"

	"github.com/cfsroot/cfsroot/internal/testutil"
)

// The two examples of GB/T 32905-2016, Appendix A.
func TestStandardVectors(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"abc", "66c7f0f462eeedd9d1f2d46bdc10e4e24167c4875cf2f7a2297da02b8f4ba8e0"},
		{strings.Repeat("abcd", 16), "debe9ff92275b8a138604889c18e5a4d6fdb70e5387e5765293dcba39c0c5732"},
	} {
		got := Sum([]byte(tc.in))
		if hex.EncodeToString(got[:]) != tc.want {
			t.Errorf("SM3(%q) = %x, want %s", tc.in, got, tc.want)
		}
	}
}

// TestAgainstOpenSSL compares lengths around the block and padding
// boundaries, written in odd pieces, with `openssl dgst -sm3`.
func TestAgainstOpenSSL(t *testing.T) {
	openssl := testutil.RequireTool(t, "openssl")
	if err := exec.Command(openssl, "dgst", "-sm3", "/dev/null").Run(); err != nil {
		testutil.Unavailable(t, "this openssl has no SM3 (%v); Debian's openssl 3 has it: run make deps", err)
	}
	rng := rand.New(rand.NewSource(1))
	for _, n := range []int{0, 1, 55, 56, 57, 63, 64, 65, 119, 120, 128, 1000, 4097} {
		data := make([]byte, n)
		rng.Read(data)
		cmd := exec.Command(openssl, "dgst", "-sm3", "-hex", "-r")
		cmd.Stdin = bytes.NewReader(data)
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("openssl dgst -sm3: %v", err)
		}
		want := strings.Fields(string(out))[0]
		h := New()
		for rest := data; len(rest) > 0; {
			k := min(len(rest), 1+rng.Intn(70))
			h.Write(rest[:k])
			rest = rest[k:]
		}
		if got := hex.EncodeToString(h.Sum(nil)); got != want {
			t.Errorf("len %d: SM3 = %s, openssl says %s", n, got, want)
		}
		if got := Sum(data); hex.EncodeToString(got[:]) != want {
			t.Errorf("len %d: Sum = %x, openssl says %s", n, got, want)
		}
	}
}
