package kernelcfg

// Level says how much cfsroot depends on a requirement.
type Level int

const (
	// Required: the boot chain fails, or loses a security property, without it.
	Required Level = iota
	// Recommended: a documented feature or the project's VM tests need it;
	// the chain itself boots without it.
	Recommended
	// Optional: extra features a deployment may want.
	Optional
)

func (l Level) String() string {
	switch l {
	case Required:
		return "required"
	case Recommended:
		return "recommended"
	case Optional:
		return "optional"
	}
	return "unknown"
}

// Build says which values of a tristate option are acceptable.
type Build int

const (
	// BuiltIn: the option must be y. Bool options (LSMs, fs-verity,
	// securityfs, ...) can only be y anyway.
	BuiltIn Build = iota
	// ModuleOK: y, or m when cfsroot's initramfs carries and loads the
	// module (mkinitramfs.sh resolves its dependencies from modules.dep).
	ModuleOK
)

// Option is one kernel configuration symbol.
type Option struct {
	// Name without the CONFIG_ prefix.
	Name string
	// Since is the first mainline release in which the option does what
	// cfsroot needs ("" for options older than Linux 5.4, the first release
	// with fs-verity and a non-staging EROFS).
	Since string
	// Build says whether m is acceptable.
	Build Build
	// Module is the module's name when the option is built as m.
	Module string
	// Contains, for string options that hold a comma-separated list
	// (CONFIG_LSM), is the item the list must contain; empty for y/m options.
	Contains string
	// Value is what the fragment sets, if not "y".
	Value string
	// Deps are options the fragment sets before this one because this one
	// depends on them. They are not checked on their own: if one is off,
	// this option is missing from the config and that is reported.
	Deps []string
	// NotInFragment keeps an alternative for other platforms out of
	// cfsroot.config (e.g. SPI TPM drivers, which need an SPI controller).
	NotInFragment bool
}

// Requirement is one thing the chain needs from the kernel: either one of a
// set of options (any one of AnyOf is enough), or a minimum kernel release
// for features that have no option of their own.
type Requirement struct {
	// ID is a short stable name, used in reports and tests.
	ID string
	// Section groups requirements in the README.
	Section string
	Level   Level
	// AnyOf lists alternatives; one enabled is enough.
	AnyOf []Option
	// MinKernel, if set, is the first release with the feature; the check
	// compares it with the config's own version.
	MinKernel string
	// Why explains what cfsroot uses it for and what breaks without it.
	Why string
}

// lsmList is the CONFIG_LSM value the fragment sets: Debian trixie's list,
// which ends in ipe. Names of LSMs that are not built are skipped at boot.
const lsmList = "landlock,lockdown,yama,loadpin,safesetid,integrity,apparmor,selinux,smack,tomoyo,bpf,ipe"

const (
	secEarly   = "Initramfs and early user space"
	secVerity  = "fs-verity and the backing filesystem"
	secMount   = "Mounting the composefs image: EROFS and overlayfs"
	secIPE     = "IPE (Integrity Policy Enforcement)"
	secKeys    = "Keyrings for IPE policy signatures"
	secTPM     = "TPM measurement"
	secDevices = "Disks and the VM tests"
)

// table is the list of requirements. Versions were checked against the
// kernel's Kconfig files and merge history, and against Debian bookworm's
// 6.1 and trixie's 6.12 configs (see the tests).
var table = []Requirement{
	// Initramfs and early user space.
	{
		ID: "initramfs", Section: secEarly, Level: Required,
		AnyOf: []Option{{Name: "BLK_DEV_INITRD"}},
		Why:   "cfsroot is PID 1 of an initramfs; the kernel must unpack one.",
	},
	{
		ID: "initramfs-compression", Section: secEarly, Level: Required,
		AnyOf: []Option{{Name: "RD_GZIP"}, {Name: "RD_ZSTD", Since: "5.9"}},
		Why: "mkinitramfs.sh compresses the cpio archive with zstd by default (RD_ZSTD); " +
			"with -compress gzip the kernel needs RD_GZIP. An uncompressed archive needs neither.",
	},
	{
		ID: "devtmpfs", Section: secEarly, Level: Required,
		AnyOf: []Option{{Name: "DEVTMPFS"}},
		Why: "The init mounts devtmpfs on /dev to find the boot disk and the TPM (/dev/tpmrm0); " +
			"there is no udev in the initramfs.",
	},
	{
		ID: "proc", Section: secEarly, Level: Required,
		AnyOf: []Option{{Name: "PROC_FS"}},
		Why:   "The init reads /proc/cmdline and moves /proc into the new root.",
	},
	{
		ID: "sysfs", Section: secEarly, Level: Required,
		AnyOf: []Option{{Name: "SYSFS"}},
		Why:   "Block devices are found through /sys/class/block; securityfs is mounted on /sys/kernel/security.",
	},
	{
		ID: "tmpfs", Section: secEarly, Level: Required,
		AnyOf: []Option{{Name: "TMPFS"}},
		Why: "/run is a tmpfs (status file, TPM event log) and a transient root uses a tmpfs " +
			"as its writable upper layer.",
	},
	{
		ID: "tmpfs-xattr", Section: secEarly, Level: Recommended,
		AnyOf: []Option{{Name: "TMPFS_XATTR"}},
		Why: "A writable tmpfs upper layer needs xattrs: overlayfs records opaque directories and " +
			"redirects in trusted.overlay.* xattrs there, and turns redirect_dir and metacopy off when " +
			"the upper filesystem has none.",
	},
	{
		ID: "modules", Section: secEarly, Level: Optional,
		AnyOf: []Option{{Name: "MODULES"}},
		Why: "Only needed when options below are built as modules (m): the init then loads them " +
			"from the initramfs with finit_module.",
	},
	{
		ID: "module-decompress", Section: secEarly, Level: Optional,
		AnyOf: []Option{{Name: "MODULE_DECOMPRESS", Since: "5.17"}},
		Why: "Lets finit_module take compressed .ko.xz/.ko.zst files (MODULE_INIT_COMPRESSED_FILE). " +
			"mkinitramfs.sh stores modules decompressed (ten times faster to load under QEMU TCG), " +
			"so cfsroot does not need it.",
	},

	// fs-verity and the backing filesystem.
	{
		ID: "fs-verity", Section: secVerity, Level: Required,
		AnyOf: []Option{{Name: "FS_VERITY", Since: "5.4"}},
		Why: "The image's identity is its fs-verity digest, read from the kernel with FS_IOC_MEASURE_VERITY " +
			"so that every later read is checked against it; overlayfs verity=require checks each object's " +
			"fs-verity digest.",
	},
	{
		ID: "backing-fs", Section: secVerity, Level: Required,
		AnyOf: []Option{
			{Name: "EXT4_FS", Since: "5.4", Build: ModuleOK, Module: "ext4"},
			{Name: "F2FS_FS", Since: "5.4", Build: ModuleOK, Module: "f2fs", NotInFragment: true},
			{Name: "BTRFS_FS", Since: "5.15", Build: ModuleOK, Module: "btrfs", NotInFragment: true},
		},
		Why: "The composefs repository (image and objects) lives on a filesystem with fs-verity: " +
			"ext4 (mkfs.ext4 -O verity, 4 KiB blocks), f2fs or btrfs. One is enough; Since is the " +
			"release that added fs-verity to it. Media without fs-verity (vfat, iso9660) work only " +
			"with self-contained images copied to RAM.",
	},
	{
		ID: "fs-verity-builtin-signatures", Section: secVerity, Level: Optional,
		AnyOf: []Option{{Name: "FS_VERITY_BUILTIN_SIGNATURES", Since: "5.4"}},
		Why: "The IPE signature mode needs it: objects enabled with a builtin signature (cfsroot enable-objects) " +
			"that the kernel checks against the .fs-verity keyring. cfsroot checks image signatures itself " +
			"and the digest mode does not need it.",
	},

	// Mounting the composefs image.
	{
		ID: "erofs", Section: secMount, Level: Required,
		AnyOf: []Option{{Name: "EROFS_FS", Since: "5.4", Build: ModuleOK, Module: "erofs"}},
		Why:   "A composefs image is an EROFS filesystem holding the tree's metadata.",
	},
	{
		ID: "erofs-xattr", Section: secMount, Level: Required,
		AnyOf: []Option{{Name: "EROFS_FS_XATTR", Since: "5.4"}},
		Why: "composefs keeps overlayfs metadata in trusted.overlay.* xattrs (metacopy digests, " +
			"redirects to objects, whiteouts); without EROFS xattrs overlayfs cannot see them, so files " +
			"are neither redirected to their objects nor verified.",
	},
	{
		ID: "erofs-source", Section: secMount, Level: Required,
		AnyOf: []Option{
			{Name: "EROFS_FS_BACKED_BY_FILE", Since: "6.12"},
			{Name: "BLK_DEV_LOOP", Build: ModuleOK, Module: "loop"},
		},
		Why: "EROFS mounts the image file directly (file-backed mounts, Linux 6.12) or, as a fallback " +
			"after ENOTBLK, through a read-only loop device.",
	},
	{
		ID: "erofs-security", Section: secMount, Level: Recommended,
		AnyOf: []Option{{Name: "EROFS_FS_SECURITY", Since: "5.4"}},
		Why: "Without it EROFS has no handler for security.* xattrs, so file capabilities " +
			"(security.capability) and SELinux labels stored in the image are not visible.",
	},
	{
		ID: "overlayfs", Section: secMount, Level: Required,
		AnyOf: []Option{{Name: "OVERLAY_FS", Build: ModuleOK, Module: "overlay"}},
		Why: "The root is an overlayfs: the EROFS image as metadata layer over the object store. " +
			"cfsroot passes metacopy=on,redirect_dir=on as mount options, so OVERLAY_FS_METACOPY and " +
			"OVERLAY_FS_REDIRECT_DIR (which only set defaults) are not needed.",
	},
	{
		ID: "overlay-data-only-layers", Section: secMount, Level: Required,
		MinKernel: "6.5",
		Why: "Data-only lower layers (lowerdir=IMAGE::OBJECTS) keep the object store invisible in the " +
			"merged tree; there is no option for it, only the kernel release.",
	},
	{
		ID: "overlay-verity", Section: secMount, Level: Required,
		MinKernel: "6.6",
		Why: "overlayfs verity=require makes the kernel refuse (EIO) any file whose object lacks fs-verity " +
			"or has a digest other than the one the image records; there is no option for it, only the " +
			"kernel release.",
	},

	// IPE.
	{
		ID: "ipe", Section: secIPE, Level: Required,
		AnyOf: []Option{{Name: "SECURITY_IPE", Since: "6.12", Deps: []string{"SECURITY", "SECURITYFS", "AUDIT", "AUDITSYSCALL"}}},
		Why: "IPE enforces the signed policy cfsroot loads: only code from the initramfs or with an " +
			"allowed fs-verity digest may run. It is an LSM, so it can only be built in.",
	},
	{
		ID: "ipe-lsm", Section: secIPE, Level: Required,
		AnyOf: []Option{{Name: "LSM", Since: "5.1", Contains: "ipe", Value: lsmList}},
		Why: "A built-in LSM starts only if it is named in CONFIG_LSM, the default list. The lsm= boot " +
			"parameter replaces that list, so a kernel without ipe in CONFIG_LSM works only when booted " +
			"with lsm=...,ipe naming every wanted LSM (kernel-check --cmdline checks that); a command line " +
			"with lsm= but without ipe disables IPE even if CONFIG_LSM has it.",
	},
	{
		ID: "securityfs", Section: secIPE, Level: Required,
		AnyOf: []Option{{Name: "SECURITYFS"}},
		Why: "IPE's policy interface (/sys/kernel/security/ipe/new_policy, policies/NAME/active) and the " +
			"list of active LSMs (/sys/kernel/security/lsm) live in securityfs.",
	},
	{
		ID: "ipe-fs-verity", Section: secIPE, Level: Required,
		AnyOf: []Option{{Name: "IPE_PROP_FS_VERITY", Since: "6.12"}},
		Why: "Provides the fsverity_digest= policy property, which lets the policy allow the files reached " +
			"through the composefs root by their objects' digests.",
	},
	{
		ID: "ipe-fs-verity-signature", Section: secIPE, Level: Optional,
		AnyOf: []Option{{Name: "IPE_PROP_FS_VERITY_BUILTIN_SIG", Since: "6.12", Deps: []string{"FS_VERITY_BUILTIN_SIGNATURES"}}},
		Why: "Provides fsverity_signature=TRUE rules (files with a builtin fs-verity signature): the IPE signature " +
			"mode (cfsroot policy generate --mode signature), one rule for a root of any size. Without it only the " +
			"digest mode works, which fits about 570 executables.",
	},
	{
		ID: "ipe-dm-verity", Section: secIPE, Level: Optional,
		AnyOf: []Option{{Name: "IPE_PROP_DM_VERITY", Since: "6.12"}},
		Why:   "Provides dmverity_roothash= rules for dm-verity volumes; cfsroot does not use dm-verity.",
	},

	// Keyrings.
	{
		ID: "builtin-keyring", Section: secKeys, Level: Required,
		AnyOf: []Option{{Name: "SYSTEM_TRUSTED_KEYRING"}},
		Why: "IPE checks policy signatures against the builtin trusted keyring first " +
			"(SECURITY_IPE selects it through SYSTEM_DATA_VERIFICATION).",
	},
	{
		ID: "ipe-policy-keyring", Section: secKeys, Level: Recommended,
		AnyOf: []Option{
			{Name: "IPE_POLICY_SIG_PLATFORM_KEYRING", Since: "6.12"},
			{Name: "IPE_POLICY_SIG_SECONDARY_KEYRING", Since: "6.12", Deps: []string{"SECONDARY_TRUSTED_KEYRING"}},
		},
		Why: "Without either, only certificates compiled into the kernel (SYSTEM_TRUSTED_KEYS) can sign " +
			"IPE policies. With the platform keyring a certificate in the UEFI db signs them (the VM " +
			"tests do this); with the secondary keyring, certificates added to .secondary_trusted_keys.",
	},
	{
		ID: "platform-keyring", Section: secKeys, Level: Recommended,
		AnyOf: []Option{{Name: "INTEGRITY_PLATFORM_KEYRING", Deps: []string{"INTEGRITY", "INTEGRITY_SIGNATURE", "INTEGRITY_ASYMMETRIC_KEYS", "SYSTEM_BLACKLIST_KEYRING"}}},
		Why:   "The .platform keyring holds firmware-provided certificates; IPE_POLICY_SIG_PLATFORM_KEYRING verifies against it.",
	},
	{
		ID: "uefi-keys", Section: secKeys, Level: Recommended,
		AnyOf: []Option{{Name: "LOAD_UEFI_KEYS", Deps: []string{"EFI"}}},
		Why:   "Loads the UEFI db certificates into the .platform keyring at boot; depends on EFI and INTEGRITY_PLATFORM_KEYRING.",
	},

	// TPM.
	{
		ID: "tpm", Section: secTPM, Level: Required,
		AnyOf: []Option{{Name: "TCG_TPM", Build: ModuleOK, Module: "tpm"}},
		Why: "cfsroot extends a PCR with the image digest, signer and policy before anything from the image " +
			"runs. A module works if the initramfs loads it with its driver, but built in the TPM is ready " +
			"before the init starts. (Only a config that sets the TPM optional boots without it.)",
	},
	{
		ID: "tpm-driver", Section: secTPM, Level: Required,
		AnyOf: []Option{
			{Name: "TCG_TIS", Build: ModuleOK, Module: "tpm_tis"},
			{Name: "TCG_CRB", Build: ModuleOK, Module: "tpm_crb"},
			{Name: "TCG_TIS_SPI", Build: ModuleOK, Module: "tpm_tis_spi", NotInFragment: true},
			{Name: "TCG_FTPM_TEE", Build: ModuleOK, Module: "tpm_ftpm_tee", NotInFragment: true},
		},
		Why: "A driver for the machine's TPM: TIS (discrete TPMs on x86, QEMU's tpm-tis used by the VM " +
			"tests), CRB (firmware TPMs on x86, QEMU's tpm-crb), SPI TPMs on boards, or a firmware TPM in " +
			"OP-TEE on Arm.",
	},

	// Disks and VM tests.
	{
		ID: "gpt", Section: secDevices, Level: Recommended,
		AnyOf: []Option{{Name: "EFI_PARTITION"}},
		Why:   "cfsroot.disk=PARTUUID=... and GPT partition names need the kernel to read GPT partition tables.",
	},
	{
		ID: "virtio-pci", Section: secDevices, Level: Recommended,
		AnyOf: []Option{{Name: "VIRTIO_PCI", Build: ModuleOK, Module: "virtio_pci"}},
		Why:   "The VM tests' virtio devices sit on QEMU's PCI bus.",
	},
	{
		ID: "virtio-blk", Section: secDevices, Level: Recommended,
		AnyOf: []Option{{Name: "VIRTIO_BLK", Build: ModuleOK, Module: "virtio_blk"}},
		Why:   "The VM tests attach the boot disk as a virtio-blk device.",
	},
	{
		ID: "serial-console", Section: secDevices, Level: Recommended,
		AnyOf: []Option{{Name: "SERIAL_8250_CONSOLE", Deps: []string{"SERIAL_8250"}}},
		Why:   "The VM tests read the guest's console on ttyS0 (console=ttyS0).",
	},
}

// Requirements returns the table of requirements, in the order the
// reports and the generated files use.
func Requirements() []Requirement {
	out := make([]Requirement, len(table))
	for i, r := range table {
		r.AnyOf = append([]Option(nil), r.AnyOf...)
		out[i] = r
	}
	return out
}
