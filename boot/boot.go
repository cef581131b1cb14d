package boot

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cfsroot/cfsroot/internal/atomicfile"
	"github.com/cfsroot/cfsroot/internal/diskfile"
	"github.com/cfsroot/cfsroot/measure"
	"github.com/cfsroot/cfsroot/rollback"
	"github.com/cfsroot/cfsroot/rootfs/composefs/reader"
	"github.com/cfsroot/cfsroot/rootfs/ipe"
	"github.com/cfsroot/cfsroot/rootfs/mount"
	"github.com/cfsroot/cfsroot/rootfs/secversion"
	"github.com/cfsroot/cfsroot/rootfs/signature"
	"github.com/cfsroot/cfsroot/rootfs/verity"
)

// Status is what the boot did, written to /run/cfsroot/status.json for the
// booted system (and tests) to read.
type Status struct {
	Image        string        `json:"image"`
	Digest       string        `json:"digest"`
	DigestSource string        `json:"digest_source"` // "kernel" (fs-verity) or "ram-copy"
	VerifiedBy   string        `json:"verified_by"`   // "signature", "pinned-digest" or "cmdline-digest"
	Signer       string        `json:"signer,omitempty"`
	SignerSHA256 string        `json:"signer_sha256,omitempty"`
	Refused      []SlotRefusal `json:"refused,omitempty"`
	// FsveritySigners are the certificates added to the .fs-verity keyring
	// (fsverity_certs), which was then locked.
	FsveritySigners []CertStatus `json:"fsverity_signers,omitempty"`
	// Slots is the slot state (trial boots), when the repository has one.
	Slots *SlotStatus `json:"slots,omitempty"`
	// Provision is what provision_verity did, when configured.
	Provision *ProvisionStatus `json:"provision,omitempty"`
	TPM       TPMStatus        `json:"tpm"`
	IPE       *IPEStatus       `json:"ipe,omitempty"`
	// Rollback is the anti-rollback check of the booted image.
	Rollback *RollbackStatus `json:"rollback,omitempty"`
	Upper    string          `json:"upper"`
	Init     string          `json:"init"`
	Steps    []StepTime      `json:"steps"`
}

// CertStatus names a certificate.
type CertStatus struct {
	Subject string `json:"subject"`
	SHA256  string `json:"sha256"` // of its DER encoding (signature.Fingerprint)
}

// SlotRefusal records why a slot was not booted.
type SlotRefusal struct {
	Slot   string `json:"slot"`
	Reason string `json:"reason"`
}

// TPMStatus records the measurements.
type TPMStatus struct {
	Measured bool              `json:"measured"`
	Error    string            `json:"error,omitempty"`  // why not, when optional
	Capped   bool              `json:"capped,omitempty"` // a half-way failure was capped with cfsroot-failure:measure
	PCR      int               `json:"pcr"`
	Banks    map[string]string `json:"banks,omitempty"` // PCR value per bank after measuring
	Events   []string          `json:"events,omitempty"`
}

// IPEStatus records the IPE policy as the kernel has it.
type IPEStatus struct {
	Policy   string `json:"policy"`
	Version  string `json:"version,omitempty"`
	SHA256   string `json:"sha256"`          // of the policy file
	Active   bool   `json:"active"`          // read back from policies/NAME/active
	Enforced bool   `json:"enforced"`        // read back from IPE's enforce file
	Error    string `json:"error,omitempty"` // set when the load failed and the config allowed going on
}

// RollbackStatus records the anti-rollback check of the booted image: what
// the image says, the floor it was checked against and where the floor
// came from.
type RollbackStatus struct {
	Version uint64 `json:"version"`
	Product string `json:"product"`
	Floor   uint64 `json:"floor"`
	// MinVersion is the config's part of the floor, NV the NV counter's
	// value when NVState is "read" ("off": not used; "missing": optional
	// and absent, NVError says why).
	MinVersion uint64 `json:"min_version"`
	NV         uint64 `json:"nv"`
	NVState    string `json:"nv_state"`
	NVError    string `json:"nv_error,omitempty"`
	NVIndex    string `json:"nv_index,omitempty"`
}

// StepTime is how long a step took.
type StepTime struct {
	Step string `json:"step"`
	MS   int64  `json:"ms"`
}

// StepError is a boot failure: it names the step, the file and the reason.
type StepError struct {
	Step string
	File string
	Err  error
}

func (e *StepError) Error() string {
	if e.File != "" {
		return fmt.Sprintf("step %s failed: %s: %v", e.Step, e.File, e.Err)
	}
	return fmt.Sprintf("step %s failed: %v", e.Step, e.Err)
}

func (e *StepError) Unwrap() error { return e.Err }

// Boot runs the steps up to (not including) switch_root and leaves the new
// root mounted at NewRoot.
type Boot struct {
	Config *Config // nil only when the config could not be loaded (Fail)
	Choice Choice
	Log    *Logger
	// Env is the machine the boot runs on (SystemEnv() when nil).
	Env *Env

	status Status
	// trial and good are the slot state's trial (when this boot is one of
	// its attempts) and known-good slot.
	trial, good string
	floor       *rollback.Floor   // read at the first version check
	tpm         *measure.Measurer // open from the measure step to the end of Run
	tpmOff      bool              // tpm optional and not usable: measure nothing more
	failed      bool              // Fail ran
	capErr      error             // what Fail returned
}

// step runs f as the named step, timing it. A panic in f (a bug, or a
// library tripped by hostile input) becomes the step's error, so it goes
// through the failure cap and on_failure like any other failure instead of
// killing PID 1.
func (b *Boot) step(name string, f func() error) (err error) {
	start := time.Now()
	defer func() {
		if r := recover(); r != nil {
			err = &StepError{Step: name, Err: fmt.Errorf("panic: %v", r)}
		}
		b.status.Steps = append(b.status.Steps, StepTime{Step: name, MS: time.Since(start).Milliseconds()})
		if err != nil {
			var se *StepError
			if !errors.As(err, &se) {
				err = &StepError{Step: name, Err: err}
			}
		}
	}()
	return f()
}

// image is a verified image, ready to mount.
type image struct {
	name   string
	path   string   // what to mount: the image file on disk, or its RAM copy
	file   *os.File // held open so the measured file is the mounted one
	digest verity.Digest
	source string
	signer *x509.Certificate // nil when a pinned digest accepted the image
	// version is what the image says about itself (step version).
	version secversion.Info
	top     map[string]uint32 // the image's top-level entries: name → st_mode
	links   map[string]bool   // top-level entries that are symlinks
}

// upper is a persistent upper layer's disk, found and mounted.
type upper struct {
	dir    string // DIR/upper on the mounted disk, under Env.Root
	fsUUID string
}

// Run finds, verifies, measures and mounts the image, loads the IPE policy,
// extends the separator and writes the status file. On success the new root
// is at NewRoot. On failure it has already capped the PCR (see Fail).
func (b *Boot) Run(ctx context.Context) (st *Status, err error) {
	if b.Env == nil {
		b.Env = SystemEnv()
	}
	defer func() {
		if r := recover(); r != nil { // outside any step: still no panic for PID 1
			st, err = nil, &StepError{Step: "boot", Err: fmt.Errorf("panic: %v", r)}
		}
		if err != nil {
			b.Fail(ctx, err)
		}
		b.closeTPM()
	}()
	return b.run(ctx)
}

func (b *Boot) run(ctx context.Context) (*Status, error) {
	cfg := b.Config
	b.status.Init = cfg.Init
	b.status.Upper = cfg.Upper
	b.status.TPM.PCR = *cfg.PCR

	var trust *signature.TrustStore
	if err := b.step("config", func() error {
		var err error
		trust, err = signature.LoadTrustStore(b.Env.path(cfg.TrustedCerts))
		if err != nil && len(cfg.PinnedDigests) == 0 && b.Choice.Digest == nil {
			return &StepError{Step: "config", File: cfg.TrustedCerts, Err: err}
		}
		return nil
	}); err != nil {
		return nil, err
	}

	// Before anything opens an object (provision_verity enables them with
	// their signatures; the overlay reads them), the object signers go into
	// the .fs-verity keyring, which is then locked.
	var fvSigners []*x509.Certificate
	if cfg.FsverityCerts != "" {
		if err := b.step("fsverity-keys", func() error {
			var err error
			fvSigners, err = b.trustFsveritySigners()
			return err
		}); err != nil {
			return nil, err
		}
	}

	diskSel := cfg.Disk
	if b.Choice.Disk != "" {
		diskSel = b.Choice.Disk
	}
	if err := b.step("disk", func() error { return b.mountDisk(ctx, diskSel) }); err != nil {
		return nil, err
	}

	if err := b.step("slots", b.planSlots); err != nil {
		return nil, err
	}

	var img *image
	var lastErr error
	for i, slot := range b.Choice.Slots {
		err := b.step("verify:"+slot, func() error {
			var err error
			img, err = b.verifySlot(slot, i == 0, trust)
			return err
		})
		if err == nil {
			// Before anything from the image is used: its security
			// version against the floor, its product against ours.
			var floorErr bool
			err = b.step("version", func() error {
				var ferr error
				floorErr, ferr = b.checkVersion(ctx, img)
				return ferr
			})
			if err == nil {
				break
			}
			img.discard()
			if floorErr {
				// The floor itself is unknown: no slot may boot.
				return nil, err
			}
		}
		b.Log.Errorf("verify", "slot %s refused: %v", slot, err)
		b.status.Refused = append(b.status.Refused, SlotRefusal{Slot: slot, Reason: err.Error()})
		lastErr = err
		img = nil
	}
	if img == nil {
		return nil, lastErr
	}
	defer img.file.Close()
	b.bootedAs(img.name)
	b.Log.Infof("verify", "image %s verified: %s (%s, digest from %s)", img.name, img.digest, b.status.VerifiedBy, img.source)

	var up *upper
	if cfg.persistentUpper() {
		if err := b.step("upper", func() (err error) { up, err = b.mountUpper(ctx); return err }); err != nil {
			return nil, err
		}
		if err := b.step("upper-check", func() error { return b.checkUpper(img, up) }); err != nil {
			return nil, err
		}
	}

	var policy []byte
	if cfg.IPEPolicy != "" {
		if err := b.step("ipe-read", func() error {
			var err error
			policy, err = b.readPolicy(img.name)
			return err
		}); err != nil {
			return nil, err
		}
	}

	if err := b.step("measure", func() error { return b.measureImage(ctx, img, up, fvSigners) }); err != nil {
		return nil, err
	}
	if err := b.step("mount", func() error { return b.mountRoot(img, up) }); err != nil {
		return nil, err
	}
	b.detach()
	if policy != nil {
		if err := b.step("ipe", func() error { return b.loadPolicy(ctx, policy) }); err != nil {
			return nil, err
		}
	}
	if err := b.step("init-check", func() error { return b.checkInit(up) }); err != nil {
		return nil, err
	}
	if err := b.step("seal", func() error { return b.seal(ctx) }); err != nil {
		return nil, err
	}
	if err := b.writeStatus(); err != nil {
		return nil, &StepError{Step: "status", File: StatusPath, Err: err}
	}
	return &b.status, nil
}

// trustFsveritySigners loads the fsverity_certs certificates and has the
// kernel trust them for builtin fs-verity signatures, and nothing else
// from now on. Any failure stops the boot: booting on would let objects
// signed by keys someone else added pass IPE's fsverity_signature rule, or
// leave every signed object unopenable.
func (b *Boot) trustFsveritySigners() ([]*x509.Certificate, error) {
	p := b.Config.FsverityCerts
	ts, err := signature.LoadTrustStore(b.Env.path(p))
	if err != nil {
		return nil, &StepError{Step: "fsverity-keys", File: p, Err: err}
	}
	certs := ts.Certificates()
	if b.Env.TrustFsveritySigners == nil {
		return nil, &StepError{Step: "fsverity-keys", File: p, Err: errors.New("this environment cannot add keys to the .fs-verity keyring")}
	}
	if err := b.Env.TrustFsveritySigners(certs); err != nil {
		return nil, &StepError{Step: "fsverity-keys", File: p, Err: err}
	}
	for _, c := range certs {
		b.status.FsveritySigners = append(b.status.FsveritySigners, CertStatus{Subject: c.Subject.String(), SHA256: signature.Fingerprint(c)})
		b.Log.Infof("fsverity-keys", "trusting %s (sha256:%s) for builtin fs-verity signatures", c.Subject, signature.Fingerprint(c))
	}
	b.Log.Infof("fsverity-keys", "the .fs-verity keyring is locked: no key can be added until the next boot")
	return certs, nil
}

// persistentUpper says the upper layer is kept on a disk (DISK:DIR).
func (c *Config) persistentUpper() bool { return c.Upper != "none" && c.Upper != "tmpfs" }

func (b *Boot) mountDisk(ctx context.Context, selector string) error {
	sel, err := ParseDiskSelector(selector)
	if err != nil {
		return err
	}
	dev, err := b.Env.FindDisk(ctx, sel, time.Duration(b.Config.DiskTimeout))
	if err != nil {
		return err
	}
	b.Log.Infof("disk", "found %s", dev)
	if err := os.MkdirAll(b.Env.path(DiskDir), 0o700); err != nil {
		return err
	}
	if err := b.Env.Mounter.Mount(dev.Path, b.Env.path(DiskDir), b.Config.DiskFSType, unix.MS_RDONLY|unix.MS_NODEV|unix.MS_NOSUID|unix.MS_NOEXEC, ""); err != nil {
		return &StepError{Step: "disk", File: dev.Path, Err: fmt.Errorf("mount %s as %s: %w", dev.Path, b.Config.DiskFSType, err)}
	}
	return nil
}

func (b *Boot) repoPath(parts ...string) string {
	return filepath.Join(append([]string{b.Env.path(DiskDir), b.Config.Repository}, parts...)...)
}

// verifySlot opens NAME.cfs, gets its digest, checks it and reads the
// image's structure. first says the slot is the command line's or config's
// first choice (cfsroot.digest applies to it only).
func (b *Boot) verifySlot(name string, first bool, trust *signature.TrustStore) (*image, error) {
	step := "verify:" + name
	path := b.repoPath("images", name+".cfs")
	f, err := diskfile.Open(path)
	if err != nil {
		return nil, &StepError{Step: step, File: path, Err: fmt.Errorf("open image: %w", err)}
	}
	img := &image{name: name, path: path, file: f, source: "kernel"}
	fail := func(file string, err error) (*image, error) {
		img.discard()
		return nil, &StepError{Step: step, File: file, Err: err}
	}
	img.digest, err = b.Env.Digest(f)
	if err != nil {
		if !verity.IsNotSupported(err) && !errors.Is(err, verity.ErrNotEnabled) {
			return fail(path, err)
		}
		if !b.Config.AllowRAMCopy {
			return fail(path, fmt.Errorf("%w; enable fs-verity on the image when installing it (fsverity enable, or verity.Enable), or set allow_ram_copy to copy it to RAM and digest it there", err))
		}
		if err := b.copyToRAM(img); err != nil {
			return fail(path, err)
		}
	}

	var pinned *verity.Digest
	switch {
	case first && b.Choice.Digest != nil:
		pinned, b.status.VerifiedBy = b.Choice.Digest, "cmdline-digest"
	case b.Config.PinnedDigests[name] != "":
		d, _ := verity.ParseDigest(b.Config.PinnedDigests[name]) // checked when loading the config
		pinned, b.status.VerifiedBy = &d, "pinned-digest"
	}
	if pinned != nil {
		if !pinned.Equal(img.digest) {
			return fail(path, fmt.Errorf("digest %s is not the pinned %s", img.digest, pinned))
		}
	} else {
		sigPath := path + ".sig"
		sig, err := diskfile.ReadFile(sigPath, MaxSignatureFile)
		if err != nil {
			return fail(sigPath, fmt.Errorf("no signature: %w", err))
		}
		if trust == nil {
			return fail(b.Config.TrustedCerts, signature.ErrEmptyTrustStore)
		}
		cert, err := signature.Verify(sig, img.digest, trust)
		if err != nil {
			return fail(sigPath, err)
		}
		b.status.VerifiedBy = "signature"
		b.status.Signer = cert.Subject.String()
		b.status.SignerSHA256 = signature.Fingerprint(cert)
		img.signer = cert
	}
	// A signed image can still be damaged (a truncated copy signed by a
	// broken pipeline): the kernel would mount it and fail at the first
	// read. Check its whole structure now, while the error can name it.
	if err := img.readStructure(); err != nil {
		return fail(img.path, fmt.Errorf("image %s is damaged: %w", name, err))
	}
	b.status.Image = name
	b.status.Digest = img.digest.String()
	b.status.DigestSource = img.source
	return img, nil
}

// discard closes a refused image and removes its RAM copy, if any: the
// next slot may need the memory, and the booted system would keep it in
// /run.
func (img *image) discard() {
	img.file.Close()
	if img.source == "ram-copy" {
		os.Remove(img.path)
	}
}

// readStructure checks the image's header, EROFS superblock (including
// that the file is as long as the superblock says), root inode and
// top-level directory, as the kernel's EROFS will read them, and records
// the top-level entries. It reads only those inodes: a full walk costs
// about 0.5 s per 100,000 entries, which the kernel will spend anyway on
// what is used.
func (img *image) readStructure() error {
	st, err := img.file.Stat()
	if err != nil {
		return err
	}
	r, err := reader.New(img.file, st.Size())
	if err != nil {
		return err
	}
	ents, err := r.ReadDir("/")
	if err != nil {
		return fmt.Errorf("root directory: %w", err)
	}
	img.top, img.links = map[string]uint32{}, map[string]bool{}
	for _, e := range ents {
		name := e.Path[1:]
		img.top[name] = e.Mode
		img.links[name] = e.Mode&unix.S_IFMT == unix.S_IFLNK
	}
	return nil
}

// copyToRAM copies an image from a filesystem without fs-verity into /run
// and digests the copy, which is what gets mounted: the disk cannot change
// it behind our back. Copies larger than ram_copy_max_mib are refused.
func (b *Boot) copyToRAM(img *image) error {
	limit := int64(b.Config.RAMCopyMaxMiB) << 20
	if st, err := img.file.Stat(); err != nil {
		return fmt.Errorf("copy image to RAM: %w", err)
	} else if !st.Mode().IsRegular() {
		return fmt.Errorf("copy image to RAM: not a regular file")
	} else if st.Size() > limit {
		return fmt.Errorf("copy image to RAM: image is %d bytes, more than ram_copy_max_mib (%d MiB)", st.Size(), b.Config.RAMCopyMaxMiB)
	}
	dst := filepath.Join(b.Env.path(RunDir), img.name+".cfs")
	out, err := os.OpenFile(dst, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o400)
	if err != nil {
		return fmt.Errorf("copy image to RAM: %w", err)
	}
	tree, _ := verity.NewTree(verity.Params{})
	// Copy one byte more than allowed, to tell a file that grew.
	n, err := io.Copy(io.MultiWriter(out, tree), io.LimitReader(img.file, limit+1))
	if err == nil && n > limit {
		err = fmt.Errorf("image is more than ram_copy_max_mib (%d MiB)", b.Config.RAMCopyMaxMiB)
	}
	if err != nil {
		out.Close()
		os.Remove(dst)
		return fmt.Errorf("copy image to RAM: %w", err)
	}
	img.file.Close()
	img.file, img.path, img.source = out, dst, "ram-copy"
	img.digest = tree.Digest()
	return nil
}

func (b *Boot) readPolicy(imageName string) ([]byte, error) {
	p, shown := b.Env.path(b.Config.IPEPolicy), b.Config.IPEPolicy
	if b.Config.IPEPolicy == "image" {
		p = b.repoPath("images", imageName+".ipe.p7s")
		shown = filepath.Join(DiskDir, b.Config.Repository, "images", imageName+".ipe.p7s")
	}
	policy, err := diskfile.ReadFile(p, MaxPolicyFile)
	if err != nil {
		return nil, &StepError{Step: "ipe-read", File: shown, Err: err}
	}
	b.status.IPE = &IPEStatus{Policy: shown, SHA256: sha256Hex(policy)}
	return policy, nil
}

// measureImage opens the TPM and extends the image's events (image,
// signer, version and floor, object signers, upper layer).
func (b *Boot) measureImage(ctx context.Context, img *image, up *upper, fvSigners []*x509.Certificate) error {
	info := measure.ImageInfo{Name: img.name, Digest: img.digest, Signer: img.signer, Pinned: img.signer == nil, FsveritySigners: fvSigners}
	if b.Config.RollbackMeasured() && b.floor != nil {
		info.Rollback = &measure.RollbackInfo{Version: img.version.Version, Product: img.version.Product, Floor: b.floor.Value(), NV: b.floor.NVState}
	}
	if up != nil {
		info.Upper = &measure.Upper{Spec: b.Config.Upper, FSUUID: up.fsUUID}
	}
	events, err := measure.ImageEvents(info)
	if err != nil {
		return err
	}
	m, err := b.Env.OpenTPM(ctx)
	if err != nil {
		return b.tpmFailed(ctx, err)
	}
	m.PCR = *b.Config.PCR
	m.LogPath = b.Env.path(measure.DefaultLogPath)
	b.tpm = m
	return b.extend(ctx, events...)
}

// extend measures events in order, unless the TPM is optional and failed.
func (b *Boot) extend(ctx context.Context, events ...measure.Event) error {
	if b.tpm == nil || b.tpmOff {
		return nil
	}
	for _, e := range events {
		err := b.tpm.Extend(ctx, e)
		var le *measure.LogError
		if errors.As(err, &le) {
			// The PCR has the event; only the log lacks it.
			b.Log.Errorf("measure", "%v", err)
			err = nil
		}
		if err != nil {
			return b.tpmFailed(ctx, err)
		}
		b.status.TPM.Events = append(b.status.TPM.Events, e.Data)
	}
	return nil
}

// tpmFailed handles a TPM that is missing or failed. With tpm required it
// is the step's error. With tpm optional the boot goes on unmeasured; if
// the TPM failed half-way, the PCR is first capped with a failure event,
// so that the booted system cannot complete it to a good boot's value.
func (b *Boot) tpmFailed(ctx context.Context, err error) error {
	if b.Config.TPM != "optional" {
		return fmt.Errorf(`tpm is required (a config with "tpm": "optional" boots unmeasured without one): %w`, err)
	}
	b.tpmOff = true
	b.status.TPM.Error = err.Error()
	if b.tpm != nil {
		if cerr := b.tpm.Extend(ctx, measure.FailureEvent("measure")); cerr == nil || errors.As(cerr, new(*measure.LogError)) {
			b.status.TPM.Capped = true
		} else {
			b.status.TPM.Error += "; capping the PCR failed too: " + cerr.Error()
		}
		b.closeTPM()
	}
	b.Log.Errorf("measure", "not measured (tpm is optional): %s", b.status.TPM.Error)
	return nil
}

func (b *Boot) closeTPM() {
	if b.tpm != nil {
		b.tpm.Close()
		b.tpm = nil
	}
}

// seal extends the separator: every check passed. It is the last
// measurement; a PCR holding it means the boot got this far.
func (b *Boot) seal(ctx context.Context) error {
	if b.tpm == nil || b.tpmOff {
		return nil
	}
	if err := b.extend(ctx, measure.Separator()); err != nil || b.tpmOff {
		return err
	}
	b.status.TPM.Measured = true
	if vals, err := b.tpm.Read(ctx, *b.Config.PCR); err == nil {
		b.status.TPM.Banks = map[string]string{}
		for alg, v := range vals {
			b.status.TPM.Banks[alg.String()] = hex.EncodeToString(v)
		}
	}
	b.Log.Infof("measure", "extended PCR %d with %d events", *b.Config.PCR, len(b.status.TPM.Events))
	return nil
}

// checkVersion reads the verified image's security version and product
// (from the very file that was digested: fs-verity, or the RAM copy,
// guarantees its bytes are the signed ones) and refuses it below the floor
// or for another product. floorErr says the floor could not be read, which
// refuses every slot.
func (b *Boot) checkVersion(ctx context.Context, img *image) (floorErr bool, err error) {
	st, err := img.file.Stat()
	if err != nil {
		return false, &StepError{Step: "version", File: img.path, Err: err}
	}
	info, err := secversion.ReadAt(img.file, st.Size())
	if err != nil {
		return false, &StepError{Step: "version", File: img.path, Err: err}
	}
	if b.floor == nil {
		f, err := b.readFloor(ctx)
		if err != nil {
			return true, &StepError{Step: "version", File: fmt.Sprintf("TPM NV index %#08x", b.Config.NVIndex()), Err: err}
		}
		b.floor = &f
	}
	floor := b.floor.Value()
	if err := rollback.Check(info, floor, b.Config.Product); err != nil {
		return false, &StepError{Step: "version", File: img.path, Err: err}
	}
	img.version = info
	b.status.Rollback = &RollbackStatus{Version: info.Version, Product: info.Product, Floor: floor,
		MinVersion: b.floor.Config, NV: b.floor.NV, NVState: b.floor.NVState, NVError: b.floor.NVError}
	if b.Config.RollbackNV != "off" {
		b.status.Rollback.NVIndex = fmt.Sprintf("%#08x", b.Config.NVIndex())
	}
	b.Log.Infof("version", "image %s: security version %d, product %q; floor %d (min_version %d, NV counter %s)",
		img.name, info.Version, info.Product, floor, b.floor.Config, b.describeNV())
	return false, nil
}

func (b *Boot) describeNV() string {
	switch b.floor.NVState {
	case rollback.NVRead:
		return fmt.Sprint(b.floor.NV)
	case rollback.NVMissing:
		return "missing (rollback_nv optional)"
	}
	return "not used"
}

// readFloor reads the floor: the config's min_version and, when the config
// uses it, the TPM NV counter. With rollback_nv "optional" a missing TPM or
// counter leaves the floor at min_version (recorded in status.json); any
// other failure, or "required", refuses the boot.
func (b *Boot) readFloor(ctx context.Context) (rollback.Floor, error) {
	cfg := b.Config
	f := rollback.Floor{Config: cfg.MinVersion, NVState: rollback.NVOff}
	if cfg.RollbackNV == "off" {
		return f, nil
	}
	m, err := b.Env.OpenTPM(ctx)
	if err == nil {
		defer m.Close()
		f.NV, err = rollback.Read(ctx, m, cfg.NVIndex())
	}
	switch {
	case err == nil:
		f.NVState = rollback.NVRead
		return f, nil
	case cfg.RollbackNV == "optional" && (errors.Is(err, rollback.ErrMissing) || measure.IsNoTPM(err)):
		f.NVState, f.NVError = rollback.NVMissing, err.Error()
		b.Log.Errorf("version", "no rollback NV counter, floor is min_version %d alone (rollback_nv optional): %v", cfg.MinVersion, err)
		return f, nil
	}
	return f, fmt.Errorf("rollback_nv is %s: %w", cfg.RollbackNV, err)
}

// Fail caps the PCR after a failed boot, before the config's on_failure
// action runs: it extends cfsroot-failure:STEP (STEP from failed's
// StepError), so PCR values never equal a good boot's, nor the reset value
// a shell could extend to a good boot's. Run calls it on its own failures;
// the init calls it for failures outside Run (config, command line,
// modules, switch_root), with a Boot whose Config may be nil. It runs
// once; later calls return the first result. A non-nil result means the
// PCR could not be capped, and on_failure must not start a shell.
func (b *Boot) Fail(ctx context.Context, failed error) (err error) {
	if b.failed {
		return b.capErr
	}
	b.failed = true
	if b.Env == nil {
		b.Env = SystemEnv()
	}
	step := "unknown"
	var se *StepError
	if errors.As(failed, &se) {
		step = se.Step
	}
	pcr := DefaultPCR
	if b.Config != nil && b.Config.PCR != nil {
		pcr = *b.Config.PCR
	}
	ev := measure.FailureEvent(step)
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("panic: %v", r)
		}
		if err != nil {
			err = fmt.Errorf("PCR %d not capped with %s: %w", pcr, ev.Data, err)
			b.Log.Errorf("failed", "%v", err)
		} else {
			b.Log.Errorf("failed", "PCR %d capped with %s", pcr, ev.Data)
		}
		b.capErr = err
	}()
	m := b.tpm
	if m == nil {
		if m, err = b.Env.OpenTPM(ctx); err != nil {
			return err
		}
		defer m.Close()
		m.PCR = pcr
		m.LogPath = b.Env.path(measure.DefaultLogPath)
	}
	err = m.Extend(ctx, ev)
	var le *measure.LogError
	if errors.As(err, &le) {
		b.Log.Errorf("failed", "%v", err)
		err = nil
	}
	return err
}

// mountUpper finds and mounts a persistent upper layer's disk.
func (b *Boot) mountUpper(ctx context.Context) (*upper, error) {
	disk, dir, _ := strings.Cut(b.Config.Upper, ":")
	sel, err := ParseDiskSelector(disk)
	if err != nil {
		return nil, err
	}
	dev, err := b.Env.FindDisk(ctx, sel, time.Duration(b.Config.DiskTimeout))
	if err != nil {
		return nil, fmt.Errorf("upper layer: %w", err)
	}
	upperDir := b.Env.path(UpperDir)
	if err := os.MkdirAll(upperDir, 0o755); err != nil {
		return nil, err
	}
	if err := b.Env.Mounter.Mount(dev.Path, upperDir, b.Config.DiskFSType, unix.MS_NODEV|unix.MS_NOSUID, ""); err != nil {
		return nil, &StepError{Step: "upper", File: dev.Path, Err: fmt.Errorf("upper layer: mount %s: %w", dev.Path, err)}
	}
	b.Log.Infof("upper", "persistent upper layer on %s", dev)
	// DIR, DIR/upper and DIR/work are on the attacker's disk: a symlink
	// among them would be followed from the initramfs' root, outside the
	// disk, by the checks and by overlayfs alike.
	p := upperDir
	for _, part := range append(strings.Split(dir, "/"), "upper", "work") {
		p = filepath.Join(p, part)
		if st, err := os.Lstat(p); err == nil && st.Mode()&os.ModeSymlink != 0 {
			return nil, &StepError{Step: "upper", File: p, Err: errors.New("the persistent upper layer's directory is a symlink; it must be a directory on the disk")}
		}
	}
	return &upper{dir: filepath.Join(upperDir, dir), fsUUID: dev.UUID}, nil
}

// checkUpper refuses a persistent upper layer that would replace what must
// come from the verified image: anything at /usr (mounted read-only from
// the image), an entry where the image has a top-level symlink (/bin,
// /sbin, /lib... into /usr), the configured init itself, or a non-directory
// on the init's path (a symlink sending it elsewhere).
func (b *Boot) checkUpper(img *image, up *upper) error {
	layer := filepath.Join(up.dir, "upper")
	entries, err := os.ReadDir(layer)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return &StepError{Step: "upper-check", File: layer, Err: err}
	}
	for _, e := range entries {
		name := e.Name()
		switch {
		case name == "usr":
			return &StepError{Step: "upper-check", File: filepath.Join(layer, name),
				Err: errors.New("the persistent upper layer holds /usr, which must come from the verified image; remove it")}
		case img.links[name]:
			return &StepError{Step: "upper-check", File: filepath.Join(layer, name),
				Err: fmt.Errorf("the persistent upper layer holds /%s, a symlink in the verified image; remove it", name)}
		}
	}
	init := strings.TrimPrefix(path.Clean(b.Config.Init), "/")
	parts := strings.Split(init, "/")
	for i := range parts {
		p := filepath.Join(layer, filepath.Join(parts[:i+1]...))
		st, err := os.Lstat(p)
		if errors.Is(err, os.ErrNotExist) {
			break
		}
		if err != nil {
			return &StepError{Step: "upper-check", File: p, Err: err}
		}
		if i == len(parts)-1 || !st.IsDir() {
			return &StepError{Step: "upper-check", File: p,
				Err: fmt.Errorf("the persistent upper layer holds /%s on the path of the init %s, which must come from the verified image; remove it", filepath.Join(parts[:i+1]...), b.Config.Init)}
		}
	}
	return nil
}

func (b *Boot) mountRoot(img *image, up *upper) error {
	imageDir, newRoot, upperDir := b.Env.path(ImageDir), b.Env.path(NewRoot), b.Env.path(UpperDir)
	for _, d := range []string{imageDir, newRoot} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	// Mount the very file that was measured, through its descriptor.
	src := fmt.Sprintf("/proc/self/fd/%d", img.file.Fd())
	loop, err := b.Env.Mounter.EROFS(src, imageDir)
	if err != nil {
		return &StepError{Step: "mount", File: img.path, Err: err}
	}
	if loop != "" {
		b.Log.Infof("mount", "kernel cannot mount EROFS from a file; used %s", loop)
	}
	objects := b.repoPath("objects")
	if _, err := os.Stat(objects); err != nil {
		// A self-contained image needs no objects; overlay still wants a
		// data layer.
		objects = filepath.Join(b.Env.path(RunDir), "no-objects")
		if err := os.MkdirAll(objects, 0o755); err != nil {
			return err
		}
	}
	ov := mount.Overlay{Metadata: imageDir, Objects: objects}
	switch {
	case b.Config.Upper == "none":
	case b.Config.Upper == "tmpfs":
		if err := os.MkdirAll(upperDir, 0o755); err != nil {
			return err
		}
		if err := b.Env.Mounter.Mount("tmpfs", upperDir, "tmpfs", unix.MS_NODEV|unix.MS_NOSUID, "mode=0755"); err != nil {
			return fmt.Errorf("mount tmpfs upper layer: %w", err)
		}
		ov.Upper, ov.Work = upperDir+"/upper", upperDir+"/work"
	default:
		ov.Upper, ov.Work = filepath.Join(up.dir, "upper"), filepath.Join(up.dir, "work")
	}
	for _, d := range []string{ov.Upper, ov.Work} {
		if d != "" {
			if err := os.MkdirAll(d, 0o755); err != nil {
				return fmt.Errorf("upper layer: %w", err)
			}
		}
	}
	if err := b.Env.Mounter.Overlay(ov, newRoot); err != nil {
		return &StepError{Step: "mount", File: objects, Err: err}
	}
	if up != nil && img.top["usr"]&unix.S_IFMT == unix.S_IFDIR {
		// The upper layer holds no /usr (checkUpper), so /usr is the
		// image's: keep it so, read-only, as ostree does.
		usr := filepath.Join(newRoot, "usr")
		if err := b.Env.Mounter.Mount(usr, usr, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			return &StepError{Step: "mount", File: usr, Err: fmt.Errorf("bind /usr: %w", err)}
		}
		if err := b.Env.Mounter.Mount("", usr, "", unix.MS_REMOUNT|unix.MS_BIND|unix.MS_RDONLY|unix.MS_NODEV, ""); err != nil {
			return &StepError{Step: "mount", File: usr, Err: fmt.Errorf("make /usr read-only: %w", err)}
		}
	}
	b.Log.Infof("mount", "composefs root mounted at %s (verity=require, upper %s)", NewRoot, b.Config.Upper)
	return nil
}

// checkInit checks the init exists in the new root and, with a persistent
// upper layer, that the file it resolves to is the image's.
func (b *Boot) checkInit(up *upper) error {
	resolved, err := resolveInit(b.Env.path(NewRoot), b.Config.Init)
	if err != nil {
		return err
	}
	if up != nil {
		p := filepath.Join(up.dir, "upper", resolved)
		if _, err := os.Lstat(p); err == nil {
			return &StepError{Step: "init-check", File: p,
				Err: fmt.Errorf("the init %s resolves to %s, which the persistent upper layer holds; it must come from the verified image", b.Config.Init, resolved)}
		}
	}
	if b.Config.FsverityCerts != "" {
		// In the signature mode an object whose signer is not in the
		// keyring cannot even be opened: say so here, while the boot can
		// still fail cleanly, rather than as a bare EIO from exec.
		return ReadInit(b.Env.path(NewRoot), b.Config.Init)
	}
	return nil
}

// loadPolicy loads the signed IPE policy, reads back what the kernel has
// (the policy's PKCS#7, active, enforce) and measures that, or a distinct
// event when the kernel did not take it and ipe_optional lets the boot go
// on.
func (b *Boot) loadPolicy(ctx context.Context, policy []byte) error {
	st := b.status.IPE
	h, err := ipe.Load(b.Env.IPEDir, policy, b.Config.IPEEnforce)
	st.Policy = h.Name
	st.Version = h.Version
	var held []byte
	if err == nil {
		held, st.Active, st.Enforced, err = readBackIPE(b.Env.IPEDir, h.Name, policy, b.Config.IPEEnforce)
	} else {
		_, _, st.Enforced, _ = readBackIPE(b.Env.IPEDir, h.Name, nil, false)
	}
	if err != nil {
		st.Active = false
		if !b.Config.IPEOptional {
			return &StepError{Step: "ipe", File: b.Config.IPEPolicy, Err: err}
		}
		st.Error = err.Error()
		b.Log.Errorf("ipe", "policy not loaded, going on without it (ipe_optional): %v", err)
		return b.extend(ctx, measure.PolicyFailedEvent(policy))
	}
	b.Log.Infof("ipe", "policy %s %s active, enforce=%v", h.Name, h.Version, st.Enforced)
	return b.extend(ctx, measure.PolicyEvent(held, st.Enforced))
}

// readBackIPE reads what the kernel holds for policy name: its PKCS#7
// (which must be want, when want is set), whether it is active, and IPE's
// enforce state (which must be enforce when want is set).
func readBackIPE(dir, name string, want []byte, enforce bool) (held []byte, active, enforced bool, err error) {
	if e, rerr := os.ReadFile(filepath.Join(dir, "enforce")); rerr == nil {
		enforced = strings.TrimSpace(string(e)) == "1"
	}
	if want == nil {
		return nil, false, enforced, nil
	}
	pdir := filepath.Join(dir, "policies", name)
	if held, err = os.ReadFile(filepath.Join(pdir, "pkcs7")); err != nil {
		return nil, false, enforced, fmt.Errorf("read back IPE policy %q: %w", name, err)
	}
	if !bytes.Equal(held, want) {
		return nil, false, enforced, fmt.Errorf("IPE holds another policy named %q (SHA-256 %s) than the one loaded", name, sha256Hex(held))
	}
	a, err := os.ReadFile(filepath.Join(pdir, "active"))
	if err != nil {
		return nil, false, enforced, fmt.Errorf("read back IPE policy %q: %w", name, err)
	}
	if active = strings.TrimSpace(string(a)) == "1"; !active {
		return nil, false, enforced, fmt.Errorf("IPE policy %q is loaded but not active", name)
	}
	if enforce && !enforced {
		return nil, true, false, errors.New("IPE is not enforcing after writing enforce=1")
	}
	return held, active, enforced, nil
}

func (b *Boot) writeStatus() error {
	data, err := jsonIndent(b.status)
	if err != nil {
		return err
	}
	return atomicfile.WriteFile(b.Env.path(StatusPath), data, 0o644)
}
