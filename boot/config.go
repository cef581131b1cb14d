// Package boot is the sequence cfsroot's PID 1 runs: read the embedded
// config, find the disk, verify, measure and mount the signed composefs
// image, load the IPE policy, and switch root into it. Every step fails
// closed; what happens after a failure is the embedded config's choice.
package boot

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"reflect"
	"strconv"
	"strings"
	"time"

	"github.com/cfsroot/cfsroot/initramfs/layout"
	"github.com/cfsroot/cfsroot/internal/strictjson"
	"github.com/cfsroot/cfsroot/measure"
	"github.com/cfsroot/cfsroot/rollback"
	"github.com/cfsroot/cfsroot/rootfs/secversion"
	"github.com/cfsroot/cfsroot/rootfs/verity"
)

// ConfigPath is where mkinitramfs.sh puts the config in the initramfs.
const ConfigPath = layout.Config

// Config is the embedded configuration of the init. It lives in the
// initramfs, which firmware and bootloader verify, so it is trusted; the
// kernel command line can only choose among what it allows.
//
// Every field is documented in the README ("Configuration reference").
type Config struct {
	// TrustedCerts is a PEM file or directory of certificates in the
	// initramfs whose image signatures are accepted (default
	// /etc/cfsroot/certs, where mkinitramfs.sh puts them).
	TrustedCerts string `json:"trusted_certs,omitempty"`
	// FsverityCerts is a PEM file or directory of certificates in the
	// initramfs (mkinitramfs.sh -fsverity-cert puts them in
	// /etc/cfsroot/fsverity-certs) of the keys that sign the objects'
	// builtin fs-verity signatures. When set, the init adds them to the
	// kernel's .fs-verity keyring and locks it before it opens any object,
	// measures their fingerprints, and provision_verity enables objects with
	// their signatures: IPE's fsverity_signature=TRUE then matches exactly
	// the objects these keys signed.
	FsverityCerts string `json:"fsverity_certs,omitempty"`
	// Disk selects the backing filesystem: LABEL=..., UUID=..., PARTUUID=...
	// or a /dev path.
	Disk string `json:"disk"`
	// DiskFSType is the backing filesystem's type (default ext4).
	DiskFSType string `json:"disk_fstype,omitempty"`
	// DiskTimeout bounds the wait for the disk (default 30s).
	DiskTimeout Duration `json:"disk_timeout,omitempty"`
	// Repository is the composefs repository's directory on the backing
	// filesystem (default "composefs"): images/NAME.cfs, objects/xx/yyyy.
	Repository string `json:"repository,omitempty"`
	// Slots are the image names to boot, in order of preference.
	Slots []string `json:"slots"`
	// Fallback lets the init try the next slot when one is refused.
	Fallback bool `json:"fallback,omitempty"`
	// PinnedDigests maps slot names to fs-verity digests that replace the
	// signature check for that slot ("sha256:<hex>").
	PinnedDigests map[string]string `json:"pinned_digests,omitempty"`
	// CmdlineSigned says the kernel command line is covered by the boot
	// signature (a UKI): only then may cfsroot.digest= pin a digest.
	CmdlineSigned bool `json:"cmdline_signed,omitempty"`
	// ProvisionVerity lets the init enable fs-verity on the images and
	// objects of the slots it is about to try where it is missing (first
	// boot of a disk built on a host without fs-verity), before verifying
	// them as usual. The disk is remounted read-write for that only.
	ProvisionVerity bool `json:"provision_verity,omitempty"`
	// AllowRAMCopy allows images on filesystems without fs-verity: they are
	// copied to RAM and digested there; such images must be self-contained.
	AllowRAMCopy bool `json:"allow_ram_copy,omitempty"`
	// RAMCopyMaxMiB bounds a RAM copy (default 256 MiB): a bigger image is
	// refused before it fills the memory the init needs, and a refused
	// copy is removed.
	RAMCopyMaxMiB int `json:"ram_copy_max_mib,omitempty"`
	// PCR is the TPM PCR extended with the boot's measurements (default 15).
	PCR *int `json:"pcr,omitempty"`
	// TPM is "required" (no TPM: boot fails) or "optional" (default required).
	TPM string `json:"tpm,omitempty"`
	// IPEPolicy is the signed IPE policy to load: a path in the initramfs
	// (mkinitramfs.sh --policy puts it at /etc/cfsroot/ipe/policy.p7s),
	// "image" for composefs/images/NAME.ipe.p7s next to the booted image, or
	// empty for none. The kernel checks the policy's signature.
	IPEPolicy string `json:"ipe_policy,omitempty"`
	// IPEEnforce switches IPE to enforcing after the policy is active.
	IPEEnforce bool `json:"ipe_enforce,omitempty"`
	// IPEOptional lets the boot go on, unenforced, when the policy fails to
	// load; status.json records it. Off by default.
	IPEOptional bool `json:"ipe_optional,omitempty"`
	// Upper is the writable layer over the image: "none" (read-only root,
	// default), "tmpfs" (changes are lost at shutdown), or
	// "DISK:DIR" to keep upper and work directories on a data filesystem
	// (DISK as in Disk; DIR relative to it).
	Upper string `json:"upper,omitempty"`
	// Init is the program to execute in the new root (default /sbin/init).
	Init string `json:"init,omitempty"`
	// InitArgs are its arguments (after argv[0]).
	InitArgs []string `json:"init_args,omitempty"`
	// OnFailure is what to do when the boot fails: "halt" (default),
	// "reboot", or "shell" (an emergency shell; needs AllowShell).
	OnFailure string `json:"on_failure,omitempty"`
	// AllowShell must be true for OnFailure "shell"; it exists so a
	// production config cannot get a shell by a one-word change.
	AllowShell bool `json:"allow_shell,omitempty"`
	// MinVersion is the lowest image security version to boot
	// (/.cfsroot/security-version, package rootfs/secversion): the floor
	// is the higher of it and the TPM NV counter (RollbackNV).
	MinVersion uint64 `json:"min_version,omitempty"`
	// Product is the product name an image must carry to boot, exactly:
	// "" boots only images without one.
	Product string `json:"product,omitempty"`
	// RollbackNV says whether the floor's TPM NV counter is used: "off"
	// (default), "required" (no TPM or no counter: no boot) or "optional"
	// (boot on the config's min_version alone; status.json says so).
	RollbackNV string `json:"rollback_nv,omitempty"`
	// RollbackNVIndex is the NV counter's index ("0x0180cf50" by default,
	// what cfsroot tpm provision defines).
	RollbackNVIndex string `json:"rollback_nv_index,omitempty"`

	nvIndex uint32 // RollbackNVIndex parsed
}

// NVIndex is the rollback NV counter's index (RollbackNVIndex parsed).
func (c *Config) NVIndex() uint32 { return c.nvIndex }

// RollbackMeasured tells whether the config asks for anti-rollback (a
// min_version, a product or the NV counter): then the image's version and
// the floor are measured into the PCR.
func (c *Config) RollbackMeasured() bool {
	return c.MinVersion > 0 || c.Product != "" || c.RollbackNV != "off"
}

// Duration is a time.Duration written as "30s" in JSON.
type Duration time.Duration

func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("duration must be a string such as \"30s\": %w", err)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// Defaults.
const (
	DefaultPCR         = 15
	DefaultDiskTimeout = 30 * time.Second
	DefaultInit        = "/sbin/init"
	DefaultRAMCopyMiB  = 256
)

// Size limits on what the init reads. Files on the disk are opened with
// internal/diskfile (no symlinks, regular files only, bounded reads).
const (
	// MaxConfigSize bounds the config file; real ones are a few hundred bytes.
	MaxConfigSize = 1 << 20
	// MaxSignatureFile bounds NAME.cfs.sig; fsverity sign and cfsroot sign
	// write 0.3 to 2 KB (more with embedded certificates).
	MaxSignatureFile = 64 << 10
	// MaxPolicyFile bounds a signed IPE policy (the kernel takes at most
	// 64 KiB of PKCS#7 anyway); the same as signature.MaxDERSize.
	MaxPolicyFile = 1 << 20
)

// LoadConfig reads and checks a config file. Unknown keys are errors: a
// misspelt key must not silently leave a check at its default. Keys are
// case-sensitive and each may appear once (encoding/json alone would
// accept "TPM" for "tpm" and let the last duplicate win).
func LoadConfig(p string) (*Config, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxConfigSize+1))
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	if len(data) > MaxConfigSize {
		return nil, fmt.Errorf("config %s: larger than %d bytes", p, MaxConfigSize)
	}
	c, err := ParseConfig(data)
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", p, err)
	}
	return c, nil
}

// ParseConfig parses and checks a config's JSON, as LoadConfig does.
func ParseConfig(data []byte) (*Config, error) {
	if err := strictjson.CheckKeys(data, strictjson.Fields(reflect.TypeFor[Config]())); err != nil {
		return nil, err
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var c Config
	if err := dec.Decode(&c); err != nil {
		return nil, err
	}
	if err := c.normalize(); err != nil {
		return nil, err
	}
	return &c, nil
}

// normalize fills in defaults and rejects contradictory or unsafe values.
func (c *Config) normalize() error {
	var errs []error
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	if c.TrustedCerts == "" {
		c.TrustedCerts = layout.CertDir
	}
	if c.Disk == "" {
		bad("disk is required (LABEL=..., UUID=..., PARTUUID=... or /dev/...)")
	} else if _, err := ParseDiskSelector(c.Disk); err != nil {
		bad("disk: %v", err)
	}
	if c.DiskFSType == "" {
		c.DiskFSType = "ext4"
	}
	if c.DiskTimeout == 0 {
		c.DiskTimeout = Duration(DefaultDiskTimeout)
	}
	if c.Repository == "" {
		c.Repository = "composefs"
	}
	if err := checkRelPath(c.Repository); err != nil {
		bad("repository: %v", err)
	}
	if len(c.Slots) == 0 {
		bad("slots: at least one image name is required")
	}
	seen := map[string]bool{}
	for _, s := range c.Slots {
		if err := checkName(s); err != nil {
			bad("slots: %v", err)
		}
		if seen[s] {
			bad("slots: %q listed twice", s)
		}
		seen[s] = true
	}
	for s, d := range c.PinnedDigests {
		if !seen[s] {
			bad("pinned_digests: %q is not a slot", s)
		}
		if _, err := verity.ParseDigest(d); err != nil {
			bad("pinned_digests[%s]: %v", s, err)
		}
	}
	switch {
	case c.RAMCopyMaxMiB == 0:
		c.RAMCopyMaxMiB = DefaultRAMCopyMiB
	case c.RAMCopyMaxMiB < 0 || c.RAMCopyMaxMiB > 1<<20:
		bad("ram_copy_max_mib %d is not between 1 and %d", c.RAMCopyMaxMiB, 1<<20)
	}
	if c.PCR == nil {
		p := DefaultPCR
		c.PCR = &p
	} else if err := measure.CheckBootPCR(*c.PCR); err != nil {
		bad("pcr: %v", err)
	}
	switch c.TPM {
	case "":
		c.TPM = "required"
	case "required", "optional":
	default:
		bad("tpm %q: want required or optional", c.TPM)
	}
	if c.IPEPolicy != "" && c.IPEPolicy != "image" && !path.IsAbs(c.IPEPolicy) {
		bad("ipe_policy %q: want an absolute path in the initramfs, or \"image\"", c.IPEPolicy)
	}
	if c.FsverityCerts != "" && !path.IsAbs(c.FsverityCerts) {
		bad("fsverity_certs %q: want an absolute path in the initramfs", c.FsverityCerts)
	}
	if c.IPEEnforce && c.IPEPolicy == "" {
		bad("ipe_enforce needs an ipe_policy")
	}
	switch {
	case c.Upper == "", c.Upper == "none":
		c.Upper = "none"
	case c.Upper == "tmpfs":
	default:
		disk, dir, ok := strings.Cut(c.Upper, ":")
		if !ok {
			bad("upper %q: want none, tmpfs or DISK:DIR", c.Upper)
		} else if _, err := ParseDiskSelector(disk); err != nil {
			bad("upper: %v", err)
		} else if err := checkRelPath(dir); err != nil {
			bad("upper: %v", err)
		}
	}
	if c.Init == "" {
		c.Init = DefaultInit
	}
	if !path.IsAbs(c.Init) || hasDotDot(c.Init) {
		bad("init %q: want an absolute path without ..", c.Init)
	}
	switch c.OnFailure {
	case "":
		c.OnFailure = "halt"
	case "halt", "reboot":
	case "shell":
		if !c.AllowShell {
			bad("on_failure shell needs allow_shell: true")
		}
	default:
		bad("on_failure %q: want halt, reboot or shell", c.OnFailure)
	}
	if err := secversion.CheckProduct(c.Product); err != nil {
		bad("product: %v", err)
	}
	switch c.RollbackNV {
	case "":
		c.RollbackNV = "off"
	case "off", "required", "optional":
	default:
		bad("rollback_nv %q: want off, required or optional", c.RollbackNV)
	}
	c.nvIndex = rollback.DefaultIndex
	if c.RollbackNVIndex != "" {
		v, err := strconv.ParseUint(c.RollbackNVIndex, 0, 32)
		if err == nil {
			err = rollback.CheckIndex(uint32(v))
		}
		if err != nil || !strings.HasPrefix(c.RollbackNVIndex, "0x") {
			bad("rollback_nv_index %q: want an NV index such as \"0x0180cf50\"", c.RollbackNVIndex)
		}
		c.nvIndex = uint32(v)
	}
	return errors.Join(errs...)
}

// checkName accepts an image or module name: no path separators, no dots
// at the start, nothing that could leave the directory it names a file in.
func checkName(s string) error {
	if s == "" || len(s) > 200 {
		return fmt.Errorf("name %q must be 1 to 200 characters", s)
	}
	if strings.ContainsAny(s, "/\x00") || strings.HasPrefix(s, ".") {
		return fmt.Errorf("name %q must not contain / or start with .", s)
	}
	// The name is measured (cfsroot-image:NAME:...), and the event log
	// takes only these characters: refuse here, when the initramfs is
	// built, rather than at every boot.
	if c, bad := secversion.BadNameChar(s); bad {
		return fmt.Errorf("name %q has %q; only %s are allowed", s, c, secversion.NameChars)
	}
	return nil
}

func checkRelPath(p string) error {
	if p == "" || path.IsAbs(p) || hasDotDot(p) {
		return fmt.Errorf("%q must be a relative path without ..", p)
	}
	return nil
}

func hasDotDot(p string) bool {
	for _, e := range strings.Split(p, "/") {
		if e == ".." {
			return true
		}
	}
	return false
}
