package boot

import (
	"context"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cfsroot/cfsroot/internal/atomicfile"
	"github.com/cfsroot/cfsroot/internal/diskfile"
	"github.com/cfsroot/cfsroot/measure"
	"github.com/cfsroot/cfsroot/rollback"
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
	Error    string            `json:"error,omitempty"` // why not, when optional
	PCR      int               `json:"pcr"`
	Banks    map[string]string `json:"banks,omitempty"` // PCR value per bank after measuring
	Events   []string          `json:"events,omitempty"`
}

// IPEStatus records the IPE policy.
type IPEStatus struct {
	Policy   string `json:"policy"`
	Version  string `json:"version,omitempty"`
	SHA256   string `json:"sha256"`
	Active   bool   `json:"active"`
	Enforced bool   `json:"enforced"`
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
	Config *Config
	Choice Choice
	Log    *Logger
	// Env is the machine the boot runs on (SystemEnv() when nil).
	Env *Env

	status Status
	// trial and good are the slot state's trial (when this boot is one of
	// its attempts) and known-good slot.
	trial, good string
	floor       *rollback.Floor // read at the first version check
}

// step runs f as the named step, timing it.
func (b *Boot) step(name string, f func() error) error {
	start := time.Now()
	err := f()
	b.status.Steps = append(b.status.Steps, StepTime{Step: name, MS: time.Since(start).Milliseconds()})
	if err != nil {
		var se *StepError
		if !errors.As(err, &se) {
			err = &StepError{Step: name, Err: err}
		}
		return err
	}
	return nil
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
}

// Run finds, verifies, measures and mounts the image, loads the IPE policy
// and writes the status file. On success the new root is at NewRoot.
func (b *Boot) Run(ctx context.Context) (*Status, error) {
	if b.Env == nil {
		b.Env = SystemEnv()
	}
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
			img.file.Close()
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

	if err := b.step("measure", func() error { return b.measure(ctx, img, policy, fvSigners) }); err != nil {
		return nil, err
	}
	if err := b.step("mount", func() error { return b.mountRoot(img) }); err != nil {
		return nil, err
	}
	b.detach()
	if policy != nil {
		if err := b.step("ipe", func() error { return b.loadPolicy(policy) }); err != nil {
			return nil, err
		}
	}
	if err := b.step("init-check", func() error { return CheckInit(b.Env.path(NewRoot), cfg.Init) }); err != nil {
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

// verifySlot opens NAME.cfs, gets its digest and checks it. first says the
// slot is the command line's or config's first choice (cfsroot.digest
// applies to it only).
func (b *Boot) verifySlot(name string, first bool, trust *signature.TrustStore) (*image, error) {
	step := "verify:" + name
	path := b.repoPath("images", name+".cfs")
	f, err := diskfile.Open(path)
	if err != nil {
		return nil, &StepError{Step: step, File: path, Err: fmt.Errorf("open image: %w", err)}
	}
	img := &image{name: name, path: path, file: f, source: "kernel"}
	fail := func(file string, err error) (*image, error) {
		f.Close()
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
	b.status.Image = name
	b.status.Digest = img.digest.String()
	b.status.DigestSource = img.source
	return img, nil
}

// copyToRAM copies an image from a filesystem without fs-verity into /run
// and digests the copy, which is what gets mounted: the disk cannot change
// it behind our back.
func (b *Boot) copyToRAM(img *image) error {
	dst := filepath.Join(b.Env.path(RunDir), img.name+".cfs")
	out, err := os.OpenFile(dst, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o400)
	if err != nil {
		return fmt.Errorf("copy image to RAM: %w", err)
	}
	tree, _ := verity.NewTree(verity.Params{})
	if _, err := io.Copy(io.MultiWriter(out, tree), img.file); err != nil {
		out.Close()
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

func (b *Boot) measure(ctx context.Context, img *image, policy []byte, fvSigners []*x509.Certificate) error {
	info := measure.ImageInfo{Name: img.name, Digest: img.digest, Signer: img.signer, Pinned: img.signer == nil, Policy: policy, FsveritySigners: fvSigners}
	if b.Config.RollbackMeasured() && b.floor != nil {
		info.Rollback = &measure.RollbackInfo{Version: img.version.Version, Product: img.version.Product, Floor: b.floor.Value(), NV: b.floor.NVState}
	}
	events, err := measure.Events(info)
	if err != nil {
		return err
	}
	m, err := b.Env.OpenTPM(ctx)
	if err == nil {
		defer m.Close()
		m.PCR = *b.Config.PCR
		m.LogPath = b.Env.path(measure.DefaultLogPath)
		err = m.ExtendAll(ctx, events)
	}
	if err != nil {
		if b.Config.TPM == "optional" {
			b.Log.Errorf("measure", "not measured (tpm is optional): %v", err)
			b.status.TPM.Error = err.Error()
			return nil
		}
		return fmt.Errorf(`tpm is required (a config with "tpm": "optional" boots unmeasured without one): %w`, err)
	}
	b.status.TPM.Measured = true
	for _, e := range events {
		b.status.TPM.Events = append(b.status.TPM.Events, e.Data)
	}
	if vals, err := m.Read(ctx, *b.Config.PCR); err == nil {
		b.status.TPM.Banks = map[string]string{}
		for alg, v := range vals {
			b.status.TPM.Banks[alg.String()] = hex.EncodeToString(v)
		}
	}
	b.Log.Infof("measure", "extended PCR %d with %d events", *b.Config.PCR, len(events))
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

func (b *Boot) mountRoot(img *image) error {
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
	switch b.Config.Upper {
	case "none":
	case "tmpfs":
		if err := os.MkdirAll(upperDir, 0o755); err != nil {
			return err
		}
		if err := b.Env.Mounter.Mount("tmpfs", upperDir, "tmpfs", unix.MS_NODEV|unix.MS_NOSUID, "mode=0755"); err != nil {
			return fmt.Errorf("mount tmpfs upper layer: %w", err)
		}
		ov.Upper, ov.Work = upperDir+"/upper", upperDir+"/work"
	default:
		disk, dir, _ := strings.Cut(b.Config.Upper, ":")
		sel, _ := ParseDiskSelector(disk)
		dev, err := b.Env.FindDisk(context.Background(), sel, time.Duration(b.Config.DiskTimeout))
		if err != nil {
			return fmt.Errorf("upper layer: %w", err)
		}
		if err := os.MkdirAll(upperDir, 0o755); err != nil {
			return err
		}
		if err := b.Env.Mounter.Mount(dev.Path, upperDir, b.Config.DiskFSType, unix.MS_NODEV|unix.MS_NOSUID, ""); err != nil {
			return fmt.Errorf("upper layer: mount %s: %w", dev.Path, err)
		}
		ov.Upper, ov.Work = filepath.Join(upperDir, dir, "upper"), filepath.Join(upperDir, dir, "work")
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
	b.Log.Infof("mount", "composefs root mounted at %s (verity=require, upper %s)", NewRoot, b.Config.Upper)
	return nil
}

func (b *Boot) loadPolicy(policy []byte) error {
	st := b.status.IPE
	h, err := ipe.Load(b.Env.IPEDir, policy, b.Config.IPEEnforce)
	st.Policy = h.Name
	st.Version = h.Version
	if err != nil {
		if !b.Config.IPEOptional {
			return &StepError{Step: "ipe", File: b.Config.IPEPolicy, Err: err}
		}
		st.Error = err.Error()
		b.Log.Errorf("ipe", "policy not loaded, going on unenforced (ipe_optional): %v", err)
		return nil
	}
	st.Active, st.Enforced = true, b.Config.IPEEnforce
	b.Log.Infof("ipe", "policy %s %s active, enforce=%v", h.Name, h.Version, b.Config.IPEEnforce)
	return nil
}

func (b *Boot) writeStatus() error {
	data, err := jsonIndent(b.status)
	if err != nil {
		return err
	}
	return atomicfile.WriteFile(b.Env.path(StatusPath), data, 0o644)
}
