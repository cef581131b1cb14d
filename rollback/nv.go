// Package rollback is cfsroot's anti-rollback floor: the lowest security
// version (package rootfs/secversion) the init boots. The floor is the
// maximum of the config's min_version and a TPM NV counter that `cfsroot
// bless` raises after a good boot.
//
// The NV index is a TPM NV counter (TPM_NT_COUNTER): the TPM itself only
// ever increments it (TPM2_NV_Increment), nobody can write it to a lower
// value, and a counter that is deleted and defined again starts at the
// highest value any counter on the TPM ever had, so not even the owner
// hierarchy's holder can lower it (TPM 2.0 Library, Part 1, "NV Counter").
// The index can be read and incremented with its empty authValue: the
// booted system needs no secret to raise the floor, and an attacker who can
// use the TPM gains nothing but raising it (a denial of service, which root
// can do to the disk anyway). The counter value IS the floor: the first
// increment after the definition sets it to that highest value plus one, so
// a fresh TPM's floor starts at 1 (versions of images under a provisioned
// TPM start at 1).
package rollback

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
)

// DefaultIndex is the NV index of the floor: in the owner's range of the
// TCG handle registry (0x01800000-0x01BFFFFF); "cf5" for cfsroot.
const DefaultIndex uint32 = 0x0180cf50

// MaxIncrements bounds one Raise: each step is one TPM2_NV_Increment (a
// write to the TPM's NV memory), so versions should be small integers that
// grow by small steps, as Android's rollback indexes and ChromeOS' kernel
// versions do.
const MaxIncrements = 1024

// ErrMissing means the NV index is not defined (never provisioned, or
// deleted by whoever holds the owner hierarchy, or the TPM was cleared).
var ErrMissing = errors.New("the rollback NV index is not defined (run cfsroot tpm provision)")

// TPM runs TPM commands with retries and a timeout; *measure.Measurer is one.
type TPM interface {
	Do(ctx context.Context, op string, f func(transport.TPM) error) error
}

// CheckIndex tells whether index is an NV index handle (0x01xxxxxx).
func CheckIndex(index uint32) error {
	if index>>24 != uint32(tpm2.TPMHTNVIndex) {
		return fmt.Errorf("rollback: %#08x is not an NV index handle (0x01000000-0x01ffffff)", index)
	}
	return nil
}

func template(index uint32) tpm2.TPMSNVPublic {
	return tpm2.TPMSNVPublic{
		NVIndex: tpm2.TPMHandle(index),
		NameAlg: tpm2.TPMAlgSHA256,
		Attributes: tpm2.TPMANV{
			NT:        tpm2.TPMNTCounter,
			AuthWrite: true, // increment with the empty authValue
			AuthRead:  true, // read with the empty authValue
			OwnerRead: true,
			NoDA:      true, // a wrong authValue must not lock the TPM
		},
		DataSize: 8,
	}
}

// public reads the index's public area and checks that it is a counter the
// floor can come from: an NV counter (only ever incremented by the TPM),
// 8 bytes, readable with the empty authValue. Who defined it does not
// matter: any counter at that index is at least as high as ours was.
func public(ctx context.Context, tpm TPM, index uint32) (*tpm2.TPMSNVPublic, tpm2.TPM2BName, error) {
	var rsp *tpm2.NVReadPublicResponse
	err := tpm.Do(ctx, fmt.Sprintf("read the public area of NV index %#08x", index), func(t transport.TPM) (err error) {
		rsp, err = tpm2.NVReadPublic{NVIndex: tpm2.TPMHandle(index)}.Execute(t)
		return err
	})
	if err != nil {
		if errors.Is(err, tpm2.TPMRCHandle) {
			return nil, tpm2.TPM2BName{}, fmt.Errorf("rollback: NV index %#08x: %w", index, ErrMissing)
		}
		return nil, tpm2.TPM2BName{}, fmt.Errorf("rollback: %w", err)
	}
	pub, err := rsp.NVPublic.Contents()
	if err != nil {
		return nil, tpm2.TPM2BName{}, fmt.Errorf("rollback: NV index %#08x: %w", index, err)
	}
	switch {
	case pub.Attributes.NT != tpm2.TPMNTCounter:
		return nil, tpm2.TPM2BName{}, fmt.Errorf("rollback: NV index %#08x is not an NV counter (type %d): its value could be written lower; undefine it and run cfsroot tpm provision", index, pub.Attributes.NT)
	case pub.DataSize != 8:
		return nil, tpm2.TPM2BName{}, fmt.Errorf("rollback: NV index %#08x holds %d bytes, an NV counter 8", index, pub.DataSize)
	case !pub.Attributes.AuthRead:
		return nil, tpm2.TPM2BName{}, fmt.Errorf("rollback: NV index %#08x cannot be read with its authValue (TPMA_NV_AUTHREAD clear)", index)
	}
	return pub, rsp.NVName, nil
}

// Read returns the counter's value. The error wraps ErrMissing when the
// index is not defined, or when it was defined but never incremented
// (provisioning did not finish).
func Read(ctx context.Context, tpm TPM, index uint32) (uint64, error) {
	if err := CheckIndex(index); err != nil {
		return 0, err
	}
	pub, name, err := public(ctx, tpm, index)
	if err != nil {
		return 0, err
	}
	if !pub.Attributes.Written {
		return 0, fmt.Errorf("rollback: NV counter %#08x was defined but never incremented: %w", index, ErrMissing)
	}
	return read(ctx, tpm, index, name)
}

func read(ctx context.Context, tpm TPM, index uint32, name tpm2.TPM2BName) (uint64, error) {
	h := tpm2.TPMHandle(index)
	var rsp *tpm2.NVReadResponse
	err := tpm.Do(ctx, fmt.Sprintf("read NV counter %#08x", index), func(t transport.TPM) (err error) {
		rsp, err = tpm2.NVRead{
			AuthHandle: tpm2.AuthHandle{Handle: h, Name: name, Auth: tpm2.PasswordAuth(nil)},
			NVIndex:    tpm2.NamedHandle{Handle: h, Name: name},
			Size:       8,
		}.Execute(t)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("rollback: %w", err)
	}
	if len(rsp.Data.Buffer) != 8 {
		return 0, fmt.Errorf("rollback: NV counter %#08x: read %d bytes, want 8", index, len(rsp.Data.Buffer))
	}
	return binary.BigEndian.Uint64(rsp.Data.Buffer), nil
}

func increment(ctx context.Context, tpm TPM, index uint32, name tpm2.TPM2BName) error {
	h := tpm2.TPMHandle(index)
	return tpm.Do(ctx, fmt.Sprintf("increment NV counter %#08x", index), func(t transport.TPM) error {
		_, err := tpm2.NVIncrement{
			AuthHandle: tpm2.AuthHandle{Handle: h, Name: name, Auth: tpm2.PasswordAuth(nil)},
			NVIndex:    tpm2.NamedHandle{Handle: h, Name: name},
		}.Execute(t)
		return err
	})
}

// Provision defines the NV counter at index under the owner hierarchy
// (with ownerAuth, usually empty) and increments it once, so that it can be
// read; it returns the counter's value, the floor from now on. On a TPM
// that already has a usable counter there it changes nothing and returns
// its value (created false).
func Provision(ctx context.Context, tpm TPM, index uint32, ownerAuth []byte) (value uint64, created bool, err error) {
	if err := CheckIndex(index); err != nil {
		return 0, false, err
	}
	pub, name, err := public(ctx, tpm, index)
	switch {
	case errors.Is(err, ErrMissing):
		tmpl := template(index)
		err = tpm.Do(ctx, fmt.Sprintf("define NV counter %#08x", index), func(t transport.TPM) error {
			_, err := tpm2.NVDefineSpace{
				AuthHandle: tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(ownerAuth)},
				PublicInfo: tpm2.New2B(tmpl),
			}.Execute(t)
			return err
		})
		if err != nil {
			return 0, false, fmt.Errorf("rollback: %w (is the owner hierarchy's authValue set? cfsroot uses the empty one)", err)
		}
		created = true
		if pub, name, err = public(ctx, tpm, index); err != nil {
			return 0, created, err
		}
	case err != nil:
		return 0, false, err
	}
	if !pub.Attributes.Written {
		if err := increment(ctx, tpm, index, name); err != nil {
			return 0, created, fmt.Errorf("rollback: %w", err)
		}
		if _, name, err = public(ctx, tpm, index); err != nil { // the name changes once written
			return 0, created, err
		}
	}
	value, err = read(ctx, tpm, index, name)
	return value, created, err
}

// Raise increments the counter until it holds at least to, never lowering
// it (a counter cannot go down), and returns its value before and after.
// It refuses to take more than MaxIncrements steps.
func Raise(ctx context.Context, tpm TPM, index uint32, to uint64) (before, after uint64, err error) {
	if err := CheckIndex(index); err != nil {
		return 0, 0, err
	}
	pub, name, err := public(ctx, tpm, index)
	if err != nil {
		return 0, 0, err
	}
	if !pub.Attributes.Written {
		return 0, 0, fmt.Errorf("rollback: NV counter %#08x was defined but never incremented: %w", index, ErrMissing)
	}
	if before, err = read(ctx, tpm, index, name); err != nil {
		return 0, 0, err
	}
	if to <= before {
		return before, before, nil
	}
	if to-before > MaxIncrements {
		return before, before, fmt.Errorf("rollback: raising NV counter %#08x from %d to %d takes %d increments, more than %d", index, before, to, to-before, MaxIncrements)
	}
	after = before
	for after < to {
		if err := increment(ctx, tpm, index, name); err != nil {
			return before, after, fmt.Errorf("rollback: %w", err)
		}
		after++
	}
	// The TPM's word, not our count.
	got, err := read(ctx, tpm, index, name)
	if err != nil {
		return before, after, err
	}
	if got < to {
		return before, got, fmt.Errorf("rollback: NV counter %#08x is %d after raising it to %d", index, got, to)
	}
	return before, got, nil
}
