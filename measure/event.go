package measure

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"unicode/utf8"

	"github.com/cfsroot/cfsroot/rootfs/secversion"
	"github.com/cfsroot/cfsroot/rootfs/signature"
	"github.com/cfsroot/cfsroot/rootfs/verity"
)

// Event types: the "eventType" of each cfsroot record in the event log, and
// the first word of its measured text.
const (
	EventImage     = "cfsroot-image"
	EventSigner    = "cfsroot-signer"
	EventPolicy    = "cfsroot-ipe-policy"
	EventPolicyErr = "cfsroot-ipe-failed"
	EventUpper     = "cfsroot-upper"
	EventSeparator = "cfsroot-separator"
	EventFailure   = "cfsroot-failure"
	EventVersion   = "cfsroot-version"
	EventFloor     = "cfsroot-floor"
	// EventFsveritySigner names a certificate the init added to the
	// .fs-verity keyring (fsverity_certs): which keys' object signatures
	// IPE's fsverity_signature rule accepts in this boot.
	EventFsveritySigner = "cfsroot-fsverity-signer"
)

// PinnedDigest is the signer field of the signer event when the image was
// accepted by a digest pinned in the configuration instead of a signature.
const PinnedDigest = "pinned-digest"

// MaxEventSize bounds an event's text: the TPM can hash at most this much in
// one TPM2_Hash (MAX_DIGEST_BUFFER), which Extend needs for banks whose
// algorithm cfsroot cannot compute.
const MaxEventSize = 1024

// Event is one measurement: Data is hashed with each bank's algorithm and
// extended into the PCR; Type names it in the event log.
type Event struct {
	Type string // the log's content.eventType
	Data string // the measured bytes, exactly; the log's content.string
}

// Check tells whether e can be measured and logged faithfully: Data must be
// non-empty UTF-8 without NUL bytes (systemd's reader hashes content.string
// as a C string) and at most MaxEventSize bytes.
func (e Event) Check() error {
	switch {
	case e.Data == "":
		return errors.New("event has no data")
	case len(e.Data) > MaxEventSize:
		return fmt.Errorf("event data is %d bytes, at most %d allowed", len(e.Data), MaxEventSize)
	case !utf8.ValidString(e.Data):
		return errors.New("event data is not UTF-8")
	}
	for i := 0; i < len(e.Data); i++ {
		if e.Data[i] == 0 {
			return errors.New("event data contains a NUL byte")
		}
	}
	return nil
}

// ImageInfo is what the init knows about the image it is about to mount.
type ImageInfo struct {
	// Name is the image's NAME in composefs/images/NAME.cfs (what
	// cfsroot.image= selects): no directory, no ".cfs" suffix. It must be
	// 1 to 255 characters from A-Z a-z 0-9 . _ + @ ~ -, so the event text
	// stays unambiguous and byte-identical in the log.
	Name string
	// Digest is the image file's fs-verity digest.
	Digest verity.Digest
	// Signer is the trusted certificate whose signature was accepted, or
	// nil when Pinned.
	Signer *x509.Certificate
	// Pinned says the image was accepted by a digest pinned in the
	// configuration, without a signature.
	Pinned bool
	// FsveritySigners are the certificates added to the .fs-verity keyring,
	// in the order they were added (none without fsverity_certs).
	FsveritySigners []*x509.Certificate
	// Policy is the signed IPE policy exactly as the kernel holds it after
	// loading it (read back from securityfs policies/NAME/pkcs7: the bytes
	// of the .p7s file written to new_policy), or nil when no policy is
	// loaded.
	Policy []byte
	// IPEEnforce is IPE's enforce state read back after loading Policy.
	IPEEnforce bool
	// Upper is the persistent upper layer, or nil for none or tmpfs.
	Upper *Upper
	// Rollback is the image's security version and the floor it was
	// checked against, or nil when the config does not ask for
	// anti-rollback (then neither is measured).
	Rollback *RollbackInfo
}

// RollbackInfo is what the anti-rollback check saw.
type RollbackInfo struct {
	// Version and Product are what the image says (package
	// rootfs/secversion); Product may be empty.
	Version uint64
	Product string
	// Floor is the floor the version was checked against.
	Floor uint64
	// NV is where the floor's NV counter stood: "off" (not used), "read"
	// (the floor includes its value) or "missing" (rollback_nv optional
	// and no TPM or no counter).
	NV string
}

// Upper identifies a persistent upper layer ("upper": "DISK:DIR").
type Upper struct {
	// Spec is the config's upper value, DISK:DIR.
	Spec string
	// FSUUID is the filesystem UUID of the disk found for DISK, as its
	// superblock says ("" when the filesystem has none cfsroot reads).
	FSUUID string
}

// Events returns the measurements of a good boot of an image, in the order
// the init extends them:
//
//	cfsroot-image:NAME:ALG:HEX        ALG:HEX is the fs-verity digest as fsverity-utils prints it
//	cfsroot-signer:sha256:HEX         HEX = SHA-256 of the signer certificate's DER encoding
//	cfsroot-signer:pinned-digest      instead, when the digest was pinned
//	cfsroot-version:PRODUCT:N         the image's product (may be empty) and security version; only with Rollback
//	cfsroot-floor:F:nv=STATE          the floor and the NV counter's state (off, read, missing); only with Rollback
//	cfsroot-fsverity-signer:sha256:HEX  one per object signer added to the .fs-verity keyring
//	cfsroot-upper:DISK:DIR:fs-uuid=U  only with a persistent upper layer; U = its filesystem UUID
//	cfsroot-ipe-policy:sha256:HEX:enforce=N
//	                                  only with a policy, after the kernel took it: HEX = SHA-256
//	                                  of the policy as the kernel holds it (the .p7s file's
//	                                  bytes), N = IPE's enforce state read back (0 or 1)
//	cfsroot-separator                 always last, after every check passed
//
// The events up to the upper layer's (ImageEvents) are extended before the
// image is mounted, the policy event after the policy is loaded
// (PolicyEvent; PolicyFailedEvent when loading failed and the config
// allowed going on), the separator right before switch_root. A failed boot
// extends FailureEvent instead of whatever was left, so PCR values never
// equal a good boot's.
//
// Each text is ASCII, without quotes, backslashes or a trailing newline, and
// is measured as is: every bank extends with its own hash of these bytes.
func Events(img ImageInfo) ([]Event, error) {
	evs, err := ImageEvents(img)
	if err != nil {
		return nil, err
	}
	if img.Policy != nil {
		evs = append(evs, PolicyEvent(img.Policy, img.IPEEnforce))
	}
	return append(evs, Separator()), nil
}

// ImageEvents returns the events the init extends before mounting the
// image: image, signer, version and floor (with Rollback), the object
// signers, and the persistent upper layer (with Upper).
func ImageEvents(img ImageInfo) ([]Event, error) {
	if err := checkName(img.Name); err != nil {
		return nil, err
	}
	if n := img.Digest.Algorithm.Size(); n == 0 || len(img.Digest.Sum) != n {
		return nil, fmt.Errorf("measure: image %s: invalid fs-verity digest %s", img.Name, img.Digest)
	}
	var signer string
	switch {
	case img.Signer != nil && img.Pinned:
		return nil, fmt.Errorf("measure: image %s: both a signer and a pinned digest given; say which one accepted the image", img.Name)
	case img.Signer != nil:
		signer = "sha256:" + signature.Fingerprint(img.Signer)
	case img.Pinned:
		signer = PinnedDigest
	default:
		return nil, fmt.Errorf("measure: image %s: neither a signer nor a pinned digest given", img.Name)
	}
	evs := []Event{
		{Type: EventImage, Data: EventImage + ":" + img.Name + ":" + img.Digest.String()},
		{Type: EventSigner, Data: EventSigner + ":" + signer},
	}
	if r := img.Rollback; r != nil {
		if err := secversion.CheckProduct(r.Product); err != nil {
			return nil, fmt.Errorf("measure: %w", err)
		}
		switch r.NV {
		case "off", "read", "missing":
		default:
			return nil, fmt.Errorf("measure: floor NV state %q: want off, read or missing", r.NV)
		}
		evs = append(evs,
			Event{Type: EventVersion, Data: fmt.Sprintf("%s:%s:%d", EventVersion, r.Product, r.Version)},
			Event{Type: EventFloor, Data: fmt.Sprintf("%s:%d:nv=%s", EventFloor, r.Floor, r.NV)})
	}
	for _, c := range img.FsveritySigners {
		evs = append(evs, Event{Type: EventFsveritySigner, Data: EventFsveritySigner + ":sha256:" + signature.Fingerprint(c)})
	}
	if img.Upper != nil {
		ev := Event{Type: EventUpper, Data: EventUpper + ":" + img.Upper.Spec + ":fs-uuid=" + img.Upper.FSUUID}
		if err := ev.Check(); err != nil {
			return nil, fmt.Errorf("measure: upper layer %q: %w", img.Upper.Spec, err)
		}
		evs = append(evs, ev)
	}
	return evs, nil
}

// PolicyEvent is the measurement of an IPE policy the kernel took: the
// SHA-256 of the policy as the kernel holds it, and IPE's enforce state.
func PolicyEvent(policy []byte, enforce bool) Event {
	sum := sha256.Sum256(policy)
	e := "0"
	if enforce {
		e = "1"
	}
	return Event{Type: EventPolicy, Data: EventPolicy + ":sha256:" + hex.EncodeToString(sum[:]) + ":enforce=" + e}
}

// PolicyFailedEvent is measured instead of PolicyEvent when the kernel did
// not take the policy and the config allowed booting without it
// (ipe_optional): HEX is the SHA-256 of the policy file that was refused.
func PolicyFailedEvent(policy []byte) Event {
	sum := sha256.Sum256(policy)
	return Event{Type: EventPolicyErr, Data: EventPolicyErr + ":sha256:" + hex.EncodeToString(sum[:])}
}

// FailureEvent is extended when the boot fails at step, before the
// config's on_failure action runs: it caps the PCR, so that whatever runs
// next (an emergency shell) cannot hold or reach a good boot's value.
// Characters outside A-Z a-z 0-9 . _ + @ ~ - : are replaced by '_'.
func FailureEvent(step string) Event {
	b := []byte(step)
	for i, c := range b {
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case c == '.' || c == '_' || c == '+' || c == '@' || c == '~' || c == '-' || c == ':':
		default:
			b[i] = '_'
		}
	}
	if len(b) == 0 {
		b = []byte("unknown")
	}
	if len(b) > 256 {
		b = b[:256]
	}
	return Event{Type: EventFailure, Data: EventFailure + ":" + string(b)}
}

// Separator returns the event that closes cfsroot's measurements.
func Separator() Event { return Event{Type: EventSeparator, Data: EventSeparator} }

func checkName(name string) error {
	if name == "" || len(name) > 255 {
		return fmt.Errorf("measure: image name %q must be 1 to 255 characters", name)
	}
	if c, bad := secversion.BadNameChar(name); bad {
		return fmt.Errorf("measure: image name %q has %q; only %s are allowed", name, c, secversion.NameChars)
	}
	return nil
}
