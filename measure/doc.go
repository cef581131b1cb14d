// Package measure records which image cfsroot booted in a TPM PCR, on every
// active PCR bank, logs each measurement in systemd's userspace event log,
// and predicts and replays the resulting PCR values.
//
// Attestation and TPM-sealed secrets depend on it: a remote verifier, or a
// TPM policy, can only trust the booted root file system if the PCR commits
// to the image, to who signed it and to the IPE policy that guards it, and if
// every bank does (a bank left out could be extended later to any value).
//
// # What is measured
//
// After the image's signature (or pinned digest) was checked and before
// anything from the image runs, the init extends these events, in this
// order, into one PCR (DefaultPCR, 15, "system identity" in the UAPI PCR
// registry; configurable): the image's events before it is mounted, the
// policy's after the kernel took it, the separator once every check
// passed. Each event is a short
// ASCII text; the measured bytes are exactly the text below, without a
// terminating NUL or newline:
//
//	cfsroot-image:NAME:ALG:HEX
//	cfsroot-signer:sha256:FPR          or    cfsroot-signer:pinned-digest
//	cfsroot-version:PRODUCT:N          (only when the config asks for anti-rollback)
//	cfsroot-floor:F:nv=STATE           (only when the config asks for anti-rollback)
//	cfsroot-fsverity-signer:sha256:FPR (one per object signer, with fsverity_certs)
//	cfsroot-upper:DISK:DIR:fs-uuid=U   (only with a persistent upper layer)
//	cfsroot-ipe-policy:sha256:POL:enforce=E   (only when an IPE policy is loaded)
//	  or cfsroot-ipe-failed:sha256:POL        (the kernel refused it; ipe_optional)
//	cfsroot-separator
//
// and, when the boot fails at step STEP, instead of what was left:
//
//	cfsroot-failure:STEP
//
// where
//
//   - NAME is the image's name, the NAME of composefs/images/NAME.cfs (what
//     cfsroot.image= selects), limited to A-Z a-z 0-9 . _ + @ ~ - so the text
//     is unambiguous;
//   - ALG:HEX is the image file's fs-verity digest as fsverity-utils prints
//     it ("sha256:" and 64 lowercase hex digits, or "sha512:" and 128); the
//     digest covers the Merkle tree block size and salt too;
//   - FPR is the SHA-256 of the DER encoding of the trusted certificate whose
//     signature was accepted, 64 lowercase hex digits (the same as `openssl
//     x509 -noout -fingerprint -sha256` without colons); "pinned-digest"
//     when the configuration pinned the image digest instead;
//   - PRODUCT and N are the image's product name (A-Z a-z 0-9 . _ + @ ~ -,
//     possibly empty) and security version in decimal (package
//     rootfs/secversion); F is the floor it was checked against, in
//     decimal, and STATE the NV counter's: off (not used), read (F includes
//     its value) or missing (rollback_nv optional, and no TPM or counter);
//   - DISK:DIR is the config's upper value and U the filesystem UUID of the
//     disk found for DISK (as its superblock says);
//   - POL is the SHA-256 of the signed policy (the attached PKCS#7 .p7s) as
//     the kernel holds it, read back from securityfs policies/NAME/pkcs7
//     (byte for byte what was written to new_policy), and E is IPE's
//     enforce state read back (0 or 1);
//   - the failure event caps the PCR before the config's on_failure action
//     runs, so nothing after a failed boot sees a good boot's value or the
//     reset value it could extend to one;
//   - the separator closes cfsroot's measurements: anything extended into
//     the PCR after it came from the booted system.
//
// On each bank with algorithm H, the PCR is extended with H(text), so after
// a reset (PCRs 1-16 and 23 start as zeros) the value is
//
//	PCR_0 = 0...0 (H's size)
//	PCR_i = H(PCR_{i-1} || H(text_i))
//
// which is what Predict computes, `cfsroot pcr predict` prints, and a
// verifier can recompute with nothing more than `openssl dgst`.
//
// # Banks
//
// Measurer reads the PCR allocation from the TPM (TPM2_GetCapability
// TPM_CAP_PCRS) and extends every bank that has the PCR allocated, all in
// one TPM2_PCR_Extend. cfsroot computes SHA-1, SHA-256, SHA-384, SHA-512 and
// SM3-256 itself; for a bank with any other algorithm it has the TPM hash
// the text (TPM2_Hash), so no allocated bank is ever skipped. (systemd
// instead skips banks the firmware left unused; cfsroot extends them all.)
// Predict and `cfsroot pcr predict` cover the five algorithms above.
//
// # Event log
//
// Each extension is appended to /run/log/systemd/tpm2-measure.log in
// systemd's format and with systemd's locking (see package eventlog), as a
// record
//
//	{"pcr":15,"digests":[{"hashAlg":"sha256","digest":"<hex of H(text)>"},...],
//	 "content_type":"systemd",
//	 "content":{"string":"<text>","bootId":"...","timestamp":...,"eventType":"<first word of text>"}}
//
// with one digest per extended bank. The eventType values (the text up to
// the first colon: "cfsroot-image", "cfsroot-signer", ...) are cfsroot's
// own; systemd's tools skip event types they do not know, and, because
// "string" is exactly the measured text, systemd-pcrlock can check each
// digest against it. The log survives switch_root because /run moves into
// the new root. Replay recomputes the PCRs from such a log; `cfsroot pcr
// replay` prints them.
//
// # Failures
//
// TPM commands are retried while the TPM answers TPM_RC_RETRY, TPM_RC_YIELDED
// or TPM_RC_TESTING, with backoff, at most 20 times; each Open, Extend and
// Read is bounded by Measurer.Timeout and by the caller's context. A TPM that
// does not answer in time is abandoned. Errors tell apart "there is no TPM"
// (IsNoTPM), "the TPM failed" (*Error) and "the PCR was extended but the log
// could not be written" (*LogError). Whether a missing or failing TPM stops
// the boot is the init's configuration (required or optional), not this
// package's choice.
//
// The package has no cgo, so the init stays static; its tests use
// go-tpm-tools' TPM simulator, which does.
package measure
