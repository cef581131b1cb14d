package objsig

import (
	"bufio"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// KeyringName is the kernel keyring against which fs-verity checks builtin
// signatures.
const KeyringName = ".fs-verity"

// FindKeyring returns the serial number of the keyring named name, as
// /proc/keys lists it (what keyctl's %keyring:NAME finds). The .fs-verity
// keyring is linked into no process keyring, so searching them finds
// nothing.
func FindKeyring(name string) (int, error) {
	f, err := os.Open("/proc/keys")
	if err != nil {
		return 0, fmt.Errorf("find keyring %s: %w (is /proc mounted, and the kernel built with CONFIG_KEYS?)", name, err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// "SERIAL FLAGS USAGE EXPIRY PERM UID GID TYPE DESCRIPTION: SUMMARY"
		fields := strings.Fields(sc.Text())
		if len(fields) >= 9 && fields[7] == "keyring" && strings.TrimSuffix(fields[8], ":") == name {
			id, err := strconv.ParseUint(fields[0], 16, 31)
			if err != nil {
				return 0, fmt.Errorf("find keyring %s: bad serial %q in /proc/keys", name, fields[0])
			}
			return int(id), nil
		}
	}
	if err := sc.Err(); err != nil {
		return 0, fmt.Errorf("find keyring %s: %w", name, err)
	}
	return 0, fmt.Errorf("find keyring %s: not in /proc/keys (the kernel needs CONFIG_FS_VERITY_BUILTIN_SIGNATURES)", name)
}

// TrustSigners adds certs to the .fs-verity keyring and then restricts the
// keyring so that no key can ever be linked into it again
// (KEYCTL_RESTRICT_KEYRING without a restriction: the kernel rejects every
// later link, also by root). After it, only objects signed by certs (or by
// keys already in the keyring) can be enabled with a builtin signature. It
// fails if the keyring was already restricted: then someone else chose its
// keys.
func TrustSigners(certs []*x509.Certificate) error {
	if len(certs) == 0 {
		return errors.New("fs-verity keyring: no certificate to trust")
	}
	ring, err := FindKeyring(KeyringName)
	if err != nil {
		return err
	}
	for _, c := range certs {
		if _, err := unix.AddKey("asymmetric", "", c.Raw, ring); err != nil {
			why := ""
			switch {
			case errors.Is(err, unix.EPERM), errors.Is(err, unix.EACCES):
				why = " (the keyring is restricted, or the caller is not root)"
			case errors.Is(err, unix.EBADMSG), errors.Is(err, unix.ENOPKG), errors.Is(err, unix.EINVAL):
				why = " (the kernel cannot parse this certificate or its key type; ECDSA keys need CONFIG_CRYPTO_ECDSA)"
			}
			return fmt.Errorf("fs-verity keyring: add %q: %w%s", c.Subject, err, why)
		}
	}
	if err := unix.KeyctlRestrictKeyring(ring, "", ""); err != nil {
		if errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("fs-verity keyring: already restricted by someone else: %w", err)
		}
		return fmt.Errorf("fs-verity keyring: restrict: %w", err)
	}
	return nil
}
