package ipe

import (
	"testing"
)

// FuzzCheck: Check never panics, and what it accepts has the header
// ParseHeader reads (Load relies on that for the policy's name).
func FuzzCheck(f *testing.F) {
	f.Add([]byte("policy_name=a policy_version=0.0.1\nDEFAULT action=ALLOW\n"))
	f.Add([]byte("# c\r\npolicy_name=a\tpolicy_version=1.2.3 #x\nDEFAULT op=EXECUTE action=DENY\nDEFAULT action=ALLOW\nop=EXECUTE fsverity_digest=sha256:0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f action=ALLOW\n"))
	f.Add([]byte("policy_name=a policy_version=0.0.1\nDEFAULT\nop=KMODULE boot_verified=TRUE action=DENY"))
	f.Fuzz(func(t *testing.T, text []byte) {
		h, err := Check(text)
		if err != nil {
			return
		}
		h2, err := ParseHeader(text)
		if err != nil || h2 != h {
			t.Fatalf("Check accepted with header %+v, ParseHeader = %+v, %v", h, h2, err)
		}
		if CheckName(h.Name) != nil {
			t.Fatalf("Check accepted the name %q", h.Name)
		}
		if _, err := ParseVersion(h.Version); err != nil {
			t.Fatalf("Check accepted the version %q: %v", h.Version, err)
		}
	})
}
