package measure

import (
	"bytes"
	"encoding/hex"
	"fmt"
	"sort"

	"github.com/cfsroot/cfsroot/measure/eventlog"
)

// ExtendValue returns the PCR value after extending old with an event digest
// in bank a: H(old || digest), as TPM2_PCR_Extend computes it.
func ExtendValue(a Alg, old, eventDigest []byte) ([]byte, error) {
	h := a.New()
	if h == nil {
		return nil, fmt.Errorf("cannot compute PCR bank %s", a)
	}
	if len(old) != h.Size() || len(eventDigest) != h.Size() {
		return nil, fmt.Errorf("bank %s: PCR value of %d bytes and digest of %d bytes, want %d", a, len(old), len(eventDigest), h.Size())
	}
	h.Write(old)
	h.Write(eventDigest)
	return h.Sum(nil), nil
}

// Predict returns the value each bank of a PCR holds after events were
// extended into it from reset (all zeros, as PCRs 0-16 and 23 are at boot).
func Predict(events []Event, banks []Alg) (map[Alg][]byte, error) {
	out := make(map[Alg][]byte, len(banks))
	for _, a := range banks {
		if !a.Known() {
			return nil, fmt.Errorf("predict: cannot compute PCR bank %s", a)
		}
		pcr := make([]byte, a.Size())
		for _, ev := range events {
			if err := ev.Check(); err != nil {
				return nil, fmt.Errorf("predict: %s: %w", ev.Type, err)
			}
			var err error
			if pcr, err = ExtendValue(a, pcr, digest(a, []byte(ev.Data))); err != nil {
				return nil, fmt.Errorf("predict: %w", err)
			}
		}
		out[a] = pcr
	}
	return out, nil
}

// Replayed is the result of replaying an event log: per PCR, per bank, the
// value the log implies from reset.
type Replayed map[uint32]map[Alg][]byte

// Replay recomputes PCR values from event log records: for each record and
// each of its digests, PCR = H(PCR || digest), starting from zeros. Digests
// of algorithms cfsroot cannot compute are skipped, as systemd skips them.
// PCRs 17-22 start at all ones and PCR 0 depends on the startup locality,
// but userspace never measures into those: records for them are refused.
//
// Replay trusts the digests; VerifyRecords checks them against the texts.
func Replay(recs []eventlog.Record) (Replayed, error) {
	out := Replayed{}
	for i, r := range recs {
		if r.PCR == 0 || (r.PCR >= 17 && r.PCR <= 22) || r.PCR > 23 {
			return nil, fmt.Errorf("replay: record %d: PCR %d does not start from zeros; only PCRs 1-16 and 23 can be replayed", i+1, r.PCR)
		}
		for _, d := range r.Digests {
			a, err := ParseAlg(d.HashAlg)
			if err != nil || !a.Known() {
				continue
			}
			sum, err := hex.DecodeString(d.Digest)
			if err != nil {
				return nil, fmt.Errorf("replay: record %d: %s digest is not hex", i+1, d.HashAlg)
			}
			banks := out[r.PCR]
			if banks == nil {
				banks = map[Alg][]byte{}
				out[r.PCR] = banks
			}
			old := banks[a]
			if old == nil {
				old = make([]byte, a.Size())
			}
			if banks[a], err = ExtendValue(a, old, sum); err != nil {
				return nil, fmt.Errorf("replay: record %d: %w", i+1, err)
			}
		}
	}
	return out, nil
}

// PCRs returns the PCR indexes in r, sorted.
func (r Replayed) PCRs() []uint32 {
	var pcrs []uint32
	for p := range r {
		pcrs = append(pcrs, p)
	}
	sort.Slice(pcrs, func(i, j int) bool { return pcrs[i] < pcrs[j] })
	return pcrs
}

// SortedAlgs returns the banks of m in TPM_ALG_ID order.
func SortedAlgs[V any](m map[Alg]V) []Alg {
	var algs []Alg
	for a := range m {
		algs = append(algs, a)
	}
	sort.Slice(algs, func(i, j int) bool { return algs[i] < algs[j] })
	return algs
}

// VerifyRecords checks, for every "systemd" record with a content string,
// that each digest of a known algorithm is the hash of that string, as
// systemd-pcrlock does. It returns the first mismatch.
func VerifyRecords(recs []eventlog.Record) error {
	for i, r := range recs {
		if err := CheckRecord(r); err != nil {
			return fmt.Errorf("record %d: %w", i+1, err)
		}
	}
	return nil
}

// CheckRecord checks one record as VerifyRecords does. Records without a
// content string pass. Note that systemd measures some events as an HMAC
// (volume keys), whose records legitimately fail this check.
func CheckRecord(r eventlog.Record) error {
	if r.Content == nil || r.Content.String == "" {
		return nil
	}
	for _, d := range r.Digests {
		a, err := ParseAlg(d.HashAlg)
		if err != nil || !a.Known() {
			continue
		}
		got, err := hex.DecodeString(d.Digest)
		if err != nil {
			return fmt.Errorf("%s digest is not hex", d.HashAlg)
		}
		if !bytes.Equal(got, digest(a, []byte(r.Content.String))) {
			return fmt.Errorf("PCR %d, %q: the %s digest is not the hash of the string", r.PCR, r.Content.String, a)
		}
	}
	return nil
}

// CheckBootPCR refuses a PCR that cannot carry a boot's measurements: one
// outside 0-23, 16 and 23 (software at locality 0 can reset them with
// TPM2_PCR_Reset and then extend the good values itself), and 17-22 (reset
// by a dynamic launch, from which locality 2 can reset 20-22, and all
// ones rather than zeros at power-on, so Predict would not hold).
func CheckBootPCR(pcr int) error {
	switch {
	case pcr < 0 || pcr > 23:
		return fmt.Errorf("PCR %d is not between 0 and 23", pcr)
	case pcr == 16 || pcr == 23:
		return fmt.Errorf("PCR %d can be reset by any program (TPM2_PCR_Reset at locality 0), so it proves nothing; use 15 (or another of 0-15)", pcr)
	case pcr >= 17 && pcr <= 22:
		return fmt.Errorf("PCR %d belongs to dynamic launch (reset by it, partly resettable from locality 2, all ones at power-on); use 15 (or another of 0-15)", pcr)
	}
	return nil
}
