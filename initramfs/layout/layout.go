// Package layout names the paths in a cfsroot initramfs: the contract
// between mkinitramfs, which writes them, and the init, which reads them.
// It has no dependencies so that the init can import it for free.
//
//	/init                          the static init binary (mode 0755)
//	/etc/cfsroot/config            the init's config, copied byte for byte
//	/etc/cfsroot/certs/NAME        trusted certificates (PEM or DER, file names kept)
//	/etc/cfsroot/fsverity-certs/NAME  object signers for the .fs-verity keyring (likewise)
//	/etc/cfsroot/ipe/policy.p7s    optional signed IPE policy (PKCS#7, as given)
//	/etc/cfsroot/modules.list      module load list (format: package initramfs/kmod)
//	/lib/modules/KVER/PATH.ko      modules, decompressed, at their modules.dep paths
//	/lib/modules/KVER/modules.dep  modules.dep for the modules carried (for u-root's kmodule)
//	/dev, /proc, /sys, /run, /tmp  empty mount points; /dev/console (5,1) and /dev/null (1,3)
//
// Extra files go where mkinitramfs is told. Every entry is owned by root,
// has the same modification time (SOURCE_DATE_EPOCH, default 0) and comes
// in path order, so the same inputs give the same bytes.
package layout

const (
	// Init is the program the kernel runs as PID 1.
	Init = "/init"
	// Dir holds everything cfsroot's init reads besides modules.
	Dir = "/etc/cfsroot"
	// Config is the init's config file.
	Config = Dir + "/config"
	// CertDir holds the trusted certificates, one per file.
	CertDir = Dir + "/certs"
	// FsverityCertDir holds the certificates of the object signers, which
	// the init adds to the .fs-verity keyring (config fsverity_certs).
	FsverityCertDir = Dir + "/fsverity-certs"
	// Policy is the signed IPE policy the init loads, if present.
	Policy = Dir + "/ipe/policy.p7s"
	// ModuleList lists the module files to load, in order, one per line.
	ModuleList = Dir + "/modules.list"
	// ModulesRoot holds KVER/..., the kernel modules.
	ModulesRoot = "/lib/modules"
)
