package xxhash

import "testing"

// The reference implementation's published values (xxhsum -H0).
func TestSum32(t *testing.T) {
	for _, tc := range []struct {
		in   string
		seed uint32
		want uint32
	}{
		{"", 0, 0x02cc5d05},
		{"abc", 0, 0x32d153ff},
	} {
		if got := Sum32([]byte(tc.in), tc.seed); got != tc.want {
			t.Errorf("Sum32(%q, %d) = %#x, want %#x", tc.in, tc.seed, got, tc.want)
		}
	}
}
