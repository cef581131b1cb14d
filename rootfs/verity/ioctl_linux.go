package verity

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ErrNotSupported is returned (wrapped) when the file's filesystem, or the
// kernel, has no fs-verity.
var ErrNotSupported = errors.New("filesystem does not support fs-verity")

// ErrNotEnabled is returned (wrapped) by Measure when fs-verity is not enabled
// on the file.
var ErrNotEnabled = errors.New("fs-verity not enabled")

// IsNotSupported reports whether err says the filesystem or kernel lacks fs-verity.
func IsNotSupported(err error) bool { return errors.Is(err, ErrNotSupported) }

// Enable enables fs-verity on f with parameters p and, if sig is not nil, a
// builtin signature (PKCS#7 over the formatted digest, checked by the kernel
// against the .fs-verity keyring). f must be open read-only and no process
// may have the file open for writing. Enabling makes the file read-only for
// good; the kernel builds the Merkle tree, which for big files takes a while.
func Enable(f *os.File, p Params, sig []byte) error {
	p, err := p.normalized()
	if err != nil {
		return fmt.Errorf("enable fs-verity on %s: %w", f.Name(), err)
	}
	arg := unix.FsverityEnableArg{
		Version:        1,
		Hash_algorithm: uint32(p.Algorithm),
		Block_size:     uint32(p.BlockSize),
		Salt_size:      uint32(len(p.Salt)),
		Sig_size:       uint32(len(sig)),
	}
	if len(p.Salt) > 0 {
		arg.Salt_ptr = uint64(uintptr(unsafe.Pointer(&p.Salt[0])))
	}
	if len(sig) > 0 {
		arg.Sig_ptr = uint64(uintptr(unsafe.Pointer(&sig[0])))
	}
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.FS_IOC_ENABLE_VERITY, uintptr(unsafe.Pointer(&arg)))
	runtime.KeepAlive(p.Salt)
	runtime.KeepAlive(sig)
	if errno != 0 {
		return fmt.Errorf("enable fs-verity on %s: %w", f.Name(), enableError(errno, p, sig != nil))
	}
	return nil
}

func enableError(errno unix.Errno, p Params, signed bool) error {
	var why string
	switch errno {
	case unix.ENOTTY, unix.EOPNOTSUPP:
		return fmt.Errorf("%w (%v)", ErrNotSupported, errno)
	case unix.EEXIST:
		why = "fs-verity is already enabled on the file"
	case unix.ETXTBSY:
		why = "the file is open for writing somewhere; close all writers first"
	case unix.EINVAL:
		why = fmt.Sprintf("the kernel rejected the parameters (block size %d must not exceed the filesystem block size or page size; ext4 needs the verity feature and 4 KiB blocks)", p.BlockSize)
	case unix.ENOPKG:
		why = fmt.Sprintf("the kernel lacks the %s hash for fs-verity", p.Algorithm)
	case unix.EBADMSG:
		why = "the builtin signature is malformed"
	case unix.EKEYREJECTED:
		why = "the builtin signature does not match the file's digest"
	case unix.ENOKEY:
		why = "the builtin signature's signer is not in the .fs-verity keyring"
	case unix.EPERM:
		if signed {
			why = "permission denied (builtin signatures need CAP_SYS_ADMIN, or the file is append-only)"
		} else {
			why = "permission denied (the file is append-only, or signatures are required by fs.verity.require_signatures)"
		}
	case unix.EROFS:
		why = "the filesystem is read-only"
	case unix.EFBIG:
		why = "the file is too large for fs-verity"
	case unix.EISDIR, unix.EACCES:
		why = "fs-verity can only be enabled on regular files opened read-only"
	case unix.EINTR:
		why = "interrupted by a signal while building the Merkle tree"
	default:
		return errno
	}
	return fmt.Errorf("%s: %w", why, errno)
}

// Measure returns the fs-verity digest the kernel holds for f. Unlike
// DigestFile it costs nothing, and the kernel checks every later read of the
// file against it, so there is no window between measuring and using.
func Measure(f *os.File) (Digest, error) {
	var buf struct {
		hdr unix.FsverityDigest
		sum [64]byte
	}
	buf.hdr.Size = uint16(len(buf.sum))
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.FS_IOC_MEASURE_VERITY, uintptr(unsafe.Pointer(&buf)))
	if errno != 0 {
		var err error
		switch errno {
		case unix.ENODATA:
			err = fmt.Errorf("%w on %s", ErrNotEnabled, f.Name())
		case unix.ENOTTY, unix.EOPNOTSUPP:
			err = fmt.Errorf("measure %s: %w (%v)", f.Name(), ErrNotSupported, errno)
		default:
			err = fmt.Errorf("measure fs-verity of %s: %w", f.Name(), errno)
		}
		return Digest{}, err
	}
	alg := Algorithm(buf.hdr.Algorithm)
	if alg.Size() == 0 || int(buf.hdr.Size) != alg.Size() {
		return Digest{}, fmt.Errorf("measure fs-verity of %s: kernel returned unknown algorithm %d (size %d)", f.Name(), buf.hdr.Algorithm, buf.hdr.Size)
	}
	return Digest{Algorithm: alg, Sum: append([]byte(nil), buf.sum[:buf.hdr.Size]...)}, nil
}

// MaxSignatureSize bounds a builtin signature: the kernel stores it in the
// fs-verity descriptor, which it limits to 16 KiB (FS_VERITY_MAX_DESCRIPTOR_SIZE).
const MaxSignatureSize = 16384

// ErrNoSignature is returned (wrapped) by EnableSigned when fs-verity is
// already enabled on the file without a builtin signature.
var ErrNoSignature = errors.New("fs-verity is enabled without a builtin signature")

// ErrOtherSignature is returned (wrapped) by EnableSigned when fs-verity is
// already enabled on the file with a builtin signature other than the one
// given (another signer, or another signing of the same digest).
var ErrOtherSignature = errors.New("fs-verity is enabled with another builtin signature")

// EnableSigned enables fs-verity on f (SHA-256, 4 KiB blocks, no salt: what
// composefs objects use) with the builtin signature sig, which the kernel
// checks against the .fs-verity keyring: IPE's fsverity_signature=TRUE then
// matches the file. If fs-verity is already enabled, it succeeds only if it
// was enabled with exactly sig, and otherwise returns an error wrapping
// ErrNoSignature or ErrOtherSignature: a file once enabled keeps its
// signature for good, so an installer must know it is not the one it meant.
func EnableSigned(f *os.File, sig []byte) error {
	if len(sig) == 0 {
		return fmt.Errorf("enable fs-verity on %s: empty builtin signature", f.Name())
	}
	err := Enable(f, Params{}, sig)
	if !errors.Is(err, unix.EEXIST) {
		return err
	}
	have, err := ReadSignature(f)
	switch {
	case err != nil:
		return err
	case have == nil:
		return fmt.Errorf("enable fs-verity on %s: %w", f.Name(), ErrNoSignature)
	case !bytes.Equal(have, sig):
		return fmt.Errorf("enable fs-verity on %s: %w", f.Name(), ErrOtherSignature)
	}
	return nil
}

// ReadSignature returns the builtin signature fs-verity was enabled with on
// f (FS_IOC_READ_VERITY_METADATA), nil if it was enabled without one, and an
// error wrapping ErrNotEnabled if fs-verity is not enabled. The kernel
// verified the signature against the .fs-verity keyring when it was enabled
// (unless the kernel lacks CONFIG_FS_VERITY_BUILTIN_SIGNATURES); the bytes
// are what the caller may check again against its own certificates.
func ReadSignature(f *os.File) ([]byte, error) {
	// ENODATA means both "no fs-verity" and "no signature": tell them apart.
	if _, err := Measure(f); err != nil {
		return nil, err
	}
	buf := make([]byte, MaxSignatureSize)
	arg := struct {
		metadataType, offset, length, bufPtr, reserved uint64
	}{
		metadataType: unix.FS_VERITY_METADATA_TYPE_SIGNATURE,
		length:       uint64(len(buf)),
		bufPtr:       uint64(uintptr(unsafe.Pointer(&buf[0]))),
	}
	n, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.FS_IOC_READ_VERITY_METADATA, uintptr(unsafe.Pointer(&arg)))
	runtime.KeepAlive(buf)
	switch errno {
	case 0:
		return buf[:n:n], nil
	case unix.ENODATA:
		return nil, nil
	case unix.ENOTTY, unix.EOPNOTSUPP:
		return nil, fmt.Errorf("read the builtin signature of %s: %w (%v)", f.Name(), ErrNotSupported, errno)
	}
	return nil, fmt.Errorf("read the builtin signature of %s: %w", f.Name(), errno)
}
