package measure

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"strings"
	"syscall"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
	"github.com/google/go-tpm/tpm2/transport/linuxtpm"

	"github.com/cfsroot/cfsroot/measure/eventlog"
)

// Defaults of a Measurer.
const (
	// DefaultPCR is PCR 15, "system identity" in the UAPI PCR registry,
	// where systemd also measures the machine ID and file systems.
	DefaultPCR = 15
	// DefaultTimeout bounds each Open and Extend, including retries.
	DefaultTimeout = 30 * time.Second
	// DefaultLogPath is systemd's userspace measurement log.
	DefaultLogPath = eventlog.DefaultPath
)

// DefaultDevices are tried in order by Open(""): the kernel's resource
// manager first, which lets other users share the TPM, then the raw device.
var DefaultDevices = []string{"/dev/tpmrm0", "/dev/tpm0"}

// Retry policy for the TPM's "try again" warnings: TPM_RC_RETRY,
// TPM_RC_YIELDED and TPM_RC_TESTING (self-test still running).
const (
	maxAttempts  = 20
	firstBackoff = 10 * time.Millisecond
	maxBackoff   = 500 * time.Millisecond
)

// ErrNoTPM means there is no TPM device: the machine has none, or its driver
// is not loaded. Anything else that fails is the TPM failing.
var ErrNoTPM = errors.New("no TPM device")

// IsNoTPM reports whether err means there is no TPM, as opposed to a TPM
// that failed. The init's "optional" mode goes on for either; "required"
// fails for both, but the message differs.
func IsNoTPM(err error) bool { return errors.Is(err, ErrNoTPM) }

// Error is a TPM that failed: an error response, no answer in time, or a
// transport failure. Op says what cfsroot was doing.
type Error struct {
	Op  string
	Err error
}

func (e *Error) Error() string { return "TPM " + e.Op + ": " + e.Err.Error() }
func (e *Error) Unwrap() error { return e.Err }

// LogError means the PCR was extended but the event log was not written, so
// the log cannot be replayed to the PCR value any more.
type LogError struct{ Err error }

func (e *LogError) Error() string { return "PCR extended, but not logged: " + e.Err.Error() }
func (e *LogError) Unwrap() error { return e.Err }

// Measurer extends one PCR of a TPM on every active bank and logs each event.
// It is not safe for concurrent use.
type Measurer struct {
	// PCR is the PCR to extend, DefaultPCR unless changed.
	PCR int
	// LogPath is the event log to append to, DefaultLogPath unless
	// changed; "" disables logging.
	LogPath string
	// Timeout bounds each Extend and Read, retries included (DefaultTimeout
	// unless changed; 0 means only the caller's context bounds them).
	Timeout time.Duration

	tpm    transport.TPM
	closer io.Closer
	alloc  map[Alg][]byte // PCR allocation per bank (pcrSelect bitmaps)
	order  []Alg          // banks in the order the TPM listed them
	broken error          // set when the TPM stopped answering

	// localHash computes a bank's event digest in process; nil means the
	// TPM must (a test replaces it to exercise that path).
	localHash func(Alg, []byte) []byte

	// Retry policy (tests shrink it).
	attempts            int
	backoff, backoffMax time.Duration
}

// Open opens the TPM at devPath ("" tries DefaultDevices) and reads its PCR
// bank allocation. The error satisfies IsNoTPM when there is no device.
func Open(ctx context.Context, devPath string) (*Measurer, error) {
	paths := []string{devPath}
	if devPath == "" {
		paths = DefaultDevices
	}
	var t transport.TPMCloser
	var err error
	for _, p := range paths {
		if t, err = linuxtpm.Open(p); err == nil {
			break
		}
		if isMissing(err) {
			err = fmt.Errorf("%s: %w (%v)", p, ErrNoTPM, err)
			continue
		}
		return nil, &Error{Op: "open " + p, Err: err}
	}
	if t == nil {
		if devPath == "" {
			return nil, fmt.Errorf("measure: %w: none of %s is usable (last: %v)", ErrNoTPM, strings.Join(paths, ", "), err)
		}
		return nil, fmt.Errorf("measure: %w", err)
	}
	m, err := newMeasurer(ctx, t, t)
	if err != nil {
		t.Close()
		return nil, err
	}
	return m, nil
}

// isMissing tells whether opening a TPM device failed because there is none:
// no node (ENOENT), or a node without a driver behind it (ENODEV, ENXIO).
func isMissing(err error) bool {
	return errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENODEV) || errors.Is(err, syscall.ENXIO)
}

// New returns a Measurer for an already open TPM transport (a simulator, a
// socket). Close does not close t.
func New(ctx context.Context, t transport.TPM) (*Measurer, error) {
	return newMeasurer(ctx, t, nil)
}

func newMeasurer(ctx context.Context, t transport.TPM, closer io.Closer) (*Measurer, error) {
	m := &Measurer{
		PCR:        DefaultPCR,
		LogPath:    DefaultLogPath,
		Timeout:    DefaultTimeout,
		tpm:        t,
		closer:     closer,
		localHash:  digest,
		attempts:   maxAttempts,
		backoff:    firstBackoff,
		backoffMax: maxBackoff,
	}
	ctx, cancel := m.withTimeout(ctx)
	defer cancel()
	if err := m.readAllocation(ctx); err != nil {
		return nil, err
	}
	return m, nil
}

// Close closes the TPM device opened by Open.
func (m *Measurer) Close() error {
	if m.closer == nil {
		return nil
	}
	err := m.closer.Close()
	m.closer = nil
	return err
}

func (m *Measurer) withTimeout(ctx context.Context) (context.Context, context.CancelFunc) {
	if m.Timeout > 0 {
		return context.WithTimeout(ctx, m.Timeout)
	}
	return context.WithCancel(ctx)
}

// readAllocation asks the TPM which PCRs each bank has (TPM2_GetCapability
// TPM_CAP_PCRS).
func (m *Measurer) readAllocation(ctx context.Context) error {
	var rsp *tpm2.GetCapabilityResponse
	err := m.do(ctx, "read PCR banks", func(t transport.TPM) (err error) {
		rsp, err = tpm2.GetCapability{Capability: tpm2.TPMCapPCRs, PropertyCount: 1}.Execute(t)
		return err
	})
	if err != nil {
		return err
	}
	sel, err := rsp.CapabilityData.Data.AssignedPCR()
	if err != nil {
		return &Error{Op: "read PCR banks", Err: err}
	}
	m.alloc = map[Alg][]byte{}
	for _, s := range sel.PCRSelections {
		a := Alg(s.Hash)
		if _, dup := m.alloc[a]; !dup {
			m.order = append(m.order, a)
		}
		m.alloc[a] = s.PCRSelect
	}
	return nil
}

// Banks returns the banks in which PCR m.PCR is active, in the order the TPM
// lists them: every one of them must be extended, or the ones left out could
// later be extended by anyone to any value.
func (m *Measurer) Banks() []Alg {
	var banks []Alg
	for _, a := range m.order {
		if sel := m.alloc[a]; m.PCR >= 0 && m.PCR/8 < len(sel) && sel[m.PCR/8]&(1<<(m.PCR%8)) != 0 {
			banks = append(banks, a)
		}
	}
	return banks
}

// AllBanks returns every bank the TPM has, active for m.PCR or not.
func (m *Measurer) AllBanks() []Alg { return append([]Alg(nil), m.order...) }

// Extend measures one event: the event data hashed with each active bank's
// algorithm, all banks in one TPM2_PCR_Extend. Banks whose algorithm cfsroot
// cannot compute get the TPM's own hash (TPM2_Hash), so no active bank is
// ever left out. With m.LogPath set, the log is locked before the extension
// and the record appended after it, as systemd does. A *LogError means the
// PCR was extended but the log not written.
func (m *Measurer) Extend(ctx context.Context, ev Event) error {
	if err := ev.Check(); err != nil {
		return fmt.Errorf("measure %s: %w", ev.Type, err)
	}
	if m.PCR < 0 || m.PCR > 23 {
		return fmt.Errorf("measure: PCR %d out of range 0..23", m.PCR)
	}
	banks := m.Banks()
	if len(banks) == 0 {
		return &Error{Op: "extend", Err: fmt.Errorf("no active PCR bank has PCR %d (banks: %v)", m.PCR, m.order)}
	}
	ctx, cancel := m.withTimeout(ctx)
	defer cancel()

	data := []byte(ev.Data)
	vals := tpm2.TPMLDigestValues{}
	for _, a := range banks {
		d := m.localHash(a, data)
		if d == nil {
			var err error
			if d, err = m.tpmHash(ctx, a, data); err != nil {
				return err
			}
		}
		vals.Digests = append(vals.Digests, tpm2.TPMTHA{HashAlg: tpm2.TPMIAlgHash(a), Digest: d})
	}

	// Lock the log before extending, so no other writer comes between our
	// extension and our record.
	var w *eventlog.Writer
	var logErr error
	if m.LogPath != "" {
		w, logErr = eventlog.OpenWriter(m.LogPath)
		if w != nil {
			defer w.Close()
		}
	}

	err := m.do(ctx, fmt.Sprintf("extend PCR %d", m.PCR), func(t transport.TPM) error {
		_, err := tpm2.PCRExtend{
			PCRHandle: tpm2.AuthHandle{Handle: tpm2.TPMHandle(m.PCR), Auth: tpm2.PasswordAuth(nil)},
			Digests:   vals,
		}.Execute(t)
		return err
	})
	if err != nil {
		// A response code means the TPM refused and extended nothing; a
		// timeout or transport error leaves it unknown, and the log stays
		// marked pending.
		var rc tpm2.TPMRC
		if w != nil && errors.As(err, &rc) {
			w.Cancel()
		}
		return err
	}
	if logErr != nil {
		return &LogError{Err: logErr}
	}
	if w == nil {
		return nil
	}
	rec := eventlog.Record{
		PCR:         uint32(m.PCR),
		ContentType: eventlog.ContentTypeSystemd,
		Content: &eventlog.Content{
			String:    ev.Data,
			BootID:    eventlog.BootID(),
			Timestamp: eventlog.BootTime(),
			EventType: ev.Type,
		},
	}
	for _, v := range vals.Digests {
		rec.Digests = append(rec.Digests, eventlog.Digest{HashAlg: Alg(v.HashAlg).String(), Digest: hex.EncodeToString(v.Digest)})
	}
	if err := w.Append(rec); err != nil {
		return &LogError{Err: err}
	}
	return nil
}

// ExtendAll extends events in order and stops at the first failure. A
// *LogError does not stop it: the PCR matters more than the log, and the
// first LogError is returned at the end.
func (m *Measurer) ExtendAll(ctx context.Context, events []Event) error {
	var logErr error
	for _, ev := range events {
		err := m.Extend(ctx, ev)
		var le *LogError
		if errors.As(err, &le) {
			if logErr == nil {
				logErr = err
			}
			continue
		}
		if err != nil {
			return err
		}
	}
	return logErr
}

// tpmHash has the TPM hash data with an algorithm cfsroot cannot compute.
func (m *Measurer) tpmHash(ctx context.Context, a Alg, data []byte) ([]byte, error) {
	var out []byte
	err := m.do(ctx, "hash with "+a.String(), func(t transport.TPM) error {
		rsp, err := tpm2.Hash{
			Data:      tpm2.TPM2BMaxBuffer{Buffer: data},
			HashAlg:   tpm2.TPMIAlgHash(a),
			Hierarchy: tpm2.TPMRHNull,
		}.Execute(t)
		if err == nil {
			out = rsp.OutHash.Buffer
		}
		return err
	})
	return out, err
}

// Read returns PCR pcr of every bank the TPM has it in.
func (m *Measurer) Read(ctx context.Context, pcr int) (map[Alg][]byte, error) {
	if pcr < 0 || pcr > 23 {
		return nil, fmt.Errorf("measure: PCR %d out of range 0..23", pcr)
	}
	ctx, cancel := m.withTimeout(ctx)
	defer cancel()
	out := map[Alg][]byte{}
	// One bank per command: a TPM returns at most 8 digests per
	// TPM2_PCR_Read and may return fewer than asked.
	for _, a := range m.order {
		sel := tpm2.TPMLPCRSelection{PCRSelections: []tpm2.TPMSPCRSelection{{
			Hash: tpm2.TPMIAlgHash(a), PCRSelect: tpm2.PCClientCompatible.PCRs(uint(pcr)),
		}}}
		var rsp *tpm2.PCRReadResponse
		err := m.do(ctx, fmt.Sprintf("read PCR %d", pcr), func(t transport.TPM) (err error) {
			rsp, err = tpm2.PCRRead{PCRSelectionIn: sel}.Execute(t)
			return err
		})
		if err != nil {
			return nil, err
		}
		if len(rsp.PCRValues.Digests) == 1 {
			out[a] = rsp.PCRValues.Digests[0].Buffer
		}
	}
	return out, nil
}

// Do runs f, one TPM command on the Measurer's TPM, as Extend runs its
// own: bounded by m.Timeout, retrying the TPM's "try again" warnings. It
// lets other packages (the anti-rollback NV counter) share the open TPM and
// its retry policy; op names the command in errors.
func (m *Measurer) Do(ctx context.Context, op string, f func(transport.TPM) error) error {
	ctx, cancel := m.withTimeout(ctx)
	defer cancel()
	return m.do(ctx, op, f)
}

// do runs one TPM command, retrying the TPM's "try again" warnings with
// backoff, and gives up when ctx ends. A TPM that does not answer before
// ctx ends is abandoned: the Measurer fails from then on, since a late
// answer would be read as the answer to the next command.
func (m *Measurer) do(ctx context.Context, op string, f func(transport.TPM) error) error {
	if m.broken != nil {
		return &Error{Op: op, Err: m.broken}
	}
	backoff := m.backoff
	for attempt := 1; ; attempt++ {
		err := m.once(ctx, f)
		if err == nil {
			return nil
		}
		if m.broken != nil || !retryable(err) {
			return &Error{Op: op, Err: err}
		}
		if attempt >= m.attempts {
			return &Error{Op: op, Err: fmt.Errorf("still busy after %d attempts: %w", attempt, err)}
		}
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return &Error{Op: op, Err: fmt.Errorf("still busy when time ran out (%w): %w", ctx.Err(), err)}
		case <-t.C:
		}
		backoff = min(2*backoff, m.backoffMax)
	}
}

func (m *Measurer) once(ctx context.Context, f func(transport.TPM) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	done := make(chan error, 1)
	go func() { done <- f(m.tpm) }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		m.broken = fmt.Errorf("no answer from the TPM in time (%w); not using it any more", ctx.Err())
		if m.closer != nil {
			m.closer.Close() // may wake the blocked read
			m.closer = nil
		}
		return m.broken
	}
}

// retryable tells the TPM's "busy, try again" warnings from real failures.
func retryable(err error) bool {
	return errors.Is(err, tpm2.TPMRCRetry) || errors.Is(err, tpm2.TPMRCYielded) || errors.Is(err, tpm2.TPMRCTesting)
}
