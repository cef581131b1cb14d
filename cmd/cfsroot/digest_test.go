package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cfsroot/cfsroot/internal/testutil"
)

// TestDigestOutputMatchesFsverity compares whole output lines, flags included;
// rootfs/verity's tests cover the digest itself over many sizes.
func TestDigestOutputMatchesFsverity(t *testing.T) {
	testutil.RequireTool(t, "fsverity")
	dir := t.TempDir()
	var files []string
	for i, size := range []int{0, 1, 4097, 200000} {
		p := filepath.Join(dir, "f"+string(rune('a'+i)))
		os.WriteFile(p, []byte(strings.Repeat("x", size)), 0o644)
		files = append(files, p)
	}
	for _, flags := range [][]string{
		nil,
		{"--hash-alg=sha512"},
		{"--block-size=1024", "--salt=00ff"},
		{"--compact"},
	} {
		got, _, err := runCLI(t, append(append([]string{"digest"}, flags...), files...)...)
		if err != nil {
			t.Fatal(err)
		}
		want := testutil.Run(t, "fsverity", append(append([]string{"digest"}, flags...), files...)...)
		if got != string(want) {
			t.Errorf("flags %v:\ncfsroot:  %q\nfsverity: %q", flags, got, want)
		}
	}
}

func TestDigestUsageErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"digest"}, "no FILE"},
		{[]string{"digest", "--hash-alg=md5", "x"}, "unknown hash algorithm"},
		{[]string{"digest", "--block-size=3", "x"}, "block size 3"},
		{[]string{"digest", "--salt=xyz", "x"}, "not hex"},
		{[]string{"digest", "/nonexistent"}, "1 of 1 files failed"},
	} {
		_, _, err := runCLI(t, tc.args...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: err = %v, want %q", tc.args, err, tc.want)
		}
	}
}
