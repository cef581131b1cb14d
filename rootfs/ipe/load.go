// Package ipe loads signed IPE (Integrity Policy Enforcement) policies into
// the kernel through securityfs.
package ipe

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/smallstep/pkcs7"
	"golang.org/x/sys/unix"

	"github.com/cfsroot/cfsroot/rootfs/signature"
)

// DefaultDir is where securityfs exposes IPE.
const DefaultDir = "/sys/kernel/security/ipe"

// Header is the first line of an IPE policy.
type Header struct {
	Name    string // policy_name
	Version string // policy_version (A.B.C)
}

// ParseHeader reads the policy_name and policy_version of a policy text:
// its first line that is not empty once comments ('#' to the end of the
// line) and trailing blanks are removed, as the kernel reads it.
func ParseHeader(policy []byte) (Header, error) {
	for _, line := range splitLines(policy) {
		if line != "" {
			h, err := parseHeaderLine(line)
			if err != nil {
				return Header{}, fmt.Errorf("ipe policy: %w", err)
			}
			return h, nil
		}
	}
	return Header{}, errors.New("ipe policy: no header line (policy_name=N policy_version=A.B.C)")
}

// SignedContent returns the policy text carried inside an attached PKCS#7
// signature, without verifying it (the kernel does that when loading).
func SignedContent(signed []byte) (_ []byte, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("ipe policy: not a PKCS#7 message: %v", r)
		}
	}()
	// pkcs7.Parse recurses without bound (a stack overflow is not a panic
	// recover can catch); only bounded DER reaches it.
	if err := signature.CheckDER(signed); err != nil {
		return nil, fmt.Errorf("ipe policy: not a PKCS#7 message: %w", err)
	}
	p7, err := pkcs7.Parse(signed)
	if err != nil {
		return nil, fmt.Errorf("ipe policy: not a PKCS#7 message: %w", err)
	}
	if len(p7.Content) == 0 {
		return nil, errors.New("ipe policy: the signature is detached; sign with -nodetach so it carries the policy")
	}
	return p7.Content, nil
}

// Load writes a signed policy to dir/new_policy in one write (IPE rejects
// partial writes), activates it and, if enforce is set, switches IPE to
// enforcing. It returns the policy's header.
func Load(dir string, signed []byte, enforce bool) (Header, error) {
	content, err := SignedContent(signed)
	if err != nil {
		return Header{}, err
	}
	h, err := ParseHeader(content)
	if err != nil {
		return Header{}, err
	}
	if err := WriteOnce(filepath.Join(dir, "new_policy"), signed); err != nil {
		if errors.Is(err, unix.EEXIST) {
			// The same policy is already loaded (e.g. a retried boot step):
			// updating it goes through policies/NAME/update.
			err = WriteOnce(filepath.Join(dir, "policies", h.Name, "update"), signed)
		}
		if err != nil {
			return h, fmt.Errorf("load IPE policy %q: %w", h.Name, explain(err))
		}
	}
	if err := WriteOnce(filepath.Join(dir, "policies", h.Name, "active"), []byte("1")); err != nil {
		return h, fmt.Errorf("activate IPE policy %q: %w", h.Name, explain(err))
	}
	if enforce {
		if err := WriteOnce(filepath.Join(dir, "enforce"), []byte("1")); err != nil {
			return h, fmt.Errorf("enforce IPE: %w", explain(err))
		}
	}
	return h, nil
}

// Active returns the name of the active policy, or "" if none.
func Active(dir string) (string, error) {
	entries, err := os.ReadDir(filepath.Join(dir, "policies"))
	if err != nil {
		return "", fmt.Errorf("ipe: %w", explain(err))
	}
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(dir, "policies", e.Name(), "active"))
		if err == nil && strings.TrimSpace(string(b)) == "1" {
			return e.Name(), nil
		}
	}
	return "", nil
}

// WriteOnce writes b to a securityfs file in a single write(2): IPE takes a
// policy only whole, and reports its verdict as the write's error.
func WriteOnce(p string, b []byte) error {
	f, err := os.OpenFile(p, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	n, err := f.Write(b)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil && n != len(b) {
		err = fmt.Errorf("short write (%d of %d bytes)", n, len(b))
	}
	return err
}

// explain turns the kernel's errors into what the user should do.
func explain(err error) error {
	var why string
	switch {
	case errors.Is(err, unix.EBADMSG):
		why = "the policy is unsigned, or its signature or text is malformed"
	case errors.Is(err, unix.ENOKEY), errors.Is(err, unix.EKEYREJECTED):
		why = "the policy's signer is not in a kernel keyring IPE trusts (builtin, secondary or platform/UEFI db)"
	case errors.Is(err, unix.ESTALE):
		why = "the policy's version is lower than the active policy's"
	case errors.Is(err, unix.EEXIST):
		why = "a policy with this name is already loaded"
	case errors.Is(err, unix.ENOENT), errors.Is(err, unix.ENOTDIR):
		why = "IPE is not available: the kernel needs CONFIG_SECURITY_IPE with ipe in the LSM list, and securityfs mounted"
	case errors.Is(err, unix.EPERM), errors.Is(err, unix.EACCES):
		why = "permission denied (needs CAP_MAC_ADMIN)"
	case errors.Is(err, unix.EMSGSIZE), errors.Is(err, unix.ENOMEM):
		why = fmt.Sprintf("the signed policy is too large: the kernel parses at most %d bytes of PKCS#7 (about 570 fsverity_digest rules)", MaxPolicySize)
	case errors.Is(err, unix.EINVAL):
		why = "the kernel rejected the request"
	default:
		return err
	}
	return fmt.Errorf("%s: %w", why, err)
}
