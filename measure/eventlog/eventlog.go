// Package eventlog reads and writes the userspace TPM measurement log in the
// format systemd maintains at /run/log/systemd/tpm2-measure.log, so that
// systemd's tools on the booted system (systemd-pcrlock, and anything reading
// the log the way they do) see cfsroot's measurements next to systemd's own.
//
// # Format
//
// The file is an RFC 7464 JSON text sequence (application/json-seq): each
// record is the byte 0x1E, one JSON object, and a line feed. Each object is a
// TCG Canonical Event Log (CEL-JSON) record in systemd's subset of it, with
// the members in the order systemd writes them:
//
//	{"pcr":15,
//	 "digests":[{"hashAlg":"sha256","digest":"<lowercase hex>"}, ...],
//	 "content_type":"systemd",
//	 "content":{"string":"...","bootId":"<32 hex>","timestamp":<usec>,"eventType":"..."}}
//
// One digest per PCR bank the TPM extended, each the hash, with that bank's
// algorithm, of the measured bytes. systemd's "content" has the measured text
// ("string"), the kernel's boot ID without dashes ("bootId"), CLOCK_BOOTTIME
// in microseconds ("timestamp") and the kind of measurement ("eventType").
// Like systemd, records carry no "recnum".
//
// This shape was taken from systemd's src/shared/tpm2-util.c
// (tpm2_userspace_log, v255 and later) and its reader in src/pcrlock/pcrlock.c,
// which skips hash algorithms and event types it does not know and checks
// that each digest is the hash of "string".
//
// # Locking
//
// Writers follow systemd's protocol (tpm2_userspace_log_open): open the file
// with O_CREAT|O_WRONLY|O_CLOEXEC|O_NOCTTY|O_NOFOLLOW and mode 0600 (only root
// may lock it), take flock(LOCK_EX) *before* extending the PCR so that log
// order is extend order, refuse a file that is not regular, set the sticky bit
// while a record is pending, then seek to the end, write the record, fsync,
// clear the sticky bit and fsync again. A file found with the sticky bit set
// was left by a writer that died between extending and logging: it no longer
// matches the PCRs, and writers leave it alone (ErrAborted). Readers take
// flock(LOCK_SH). The log is append-only by design, so it is not written via
// a temporary file and rename: a rename would lose records appended
// concurrently by other writers.
package eventlog

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
)

// DefaultPath is where systemd keeps the userspace measurement log.
const DefaultPath = "/run/log/systemd/tpm2-measure.log"

// ContentTypeSystemd is the "content_type" of records in systemd's format.
const ContentTypeSystemd = "systemd"

// RS is the record separator of RFC 7464 JSON text sequences.
const RS = 0x1E

// Digest is one bank's digest of a record's event.
type Digest struct {
	HashAlg string `json:"hashAlg"` // "sha256", ...: names as systemd writes them
	Digest  string `json:"digest"`  // lowercase hex
}

// Content is the "content" object of a "systemd" record.
type Content struct {
	String    string `json:"string,omitempty"`
	BootID    string `json:"bootId,omitempty"`
	Timestamp uint64 `json:"timestamp,omitempty"`
	EventType string `json:"eventType,omitempty"`
}

// Record is one log record.
type Record struct {
	PCR         uint32   `json:"pcr"`
	Digests     []Digest `json:"digests"`
	ContentType string   `json:"content_type,omitempty"`
	// Content is decoded only for content_type "systemd"; RawContent always
	// holds the content as read.
	Content    *Content        `json:"-"`
	RawContent json.RawMessage `json:"-"`
}

// MarshalJSON writes the record with its members in systemd's order.
func (r Record) MarshalJSON() ([]byte, error) {
	type out struct {
		PCR         uint32   `json:"pcr"`
		Digests     []Digest `json:"digests"`
		ContentType string   `json:"content_type,omitempty"`
		Content     any      `json:"content,omitempty"`
	}
	o := out{PCR: r.PCR, Digests: r.Digests, ContentType: r.ContentType}
	switch {
	case r.Content != nil:
		o.Content = r.Content
	case len(r.RawContent) > 0:
		o.Content = r.RawContent
	}
	if o.Digests == nil {
		o.Digests = []Digest{}
	}
	return json.Marshal(o)
}

// Encode returns the record as it is appended to the log: RS, JSON, LF.
func (r Record) Encode() ([]byte, error) {
	j, err := json.Marshal(r)
	if err != nil {
		return nil, err
	}
	b := make([]byte, 0, len(j)+2)
	b = append(b, RS)
	b = append(b, j...)
	return append(b, '\n'), nil
}

// Digest returns the decoded digest for the hash algorithm named alg, and
// whether the record has one.
func (r Record) Digest(alg string) ([]byte, bool, error) {
	for _, d := range r.Digests {
		if strings.EqualFold(d.HashAlg, alg) {
			b, err := hex.DecodeString(d.Digest)
			if err != nil {
				return nil, true, fmt.Errorf("%s digest %q is not hex: %w", alg, d.Digest, err)
			}
			return b, true, nil
		}
	}
	return nil, false, nil
}

// Parse reads a whole log. It is strict where systemd's reader is strict
// (pcr, digests, hashAlg, digest, content of "systemd" records), and it
// refuses a last record without its final line feed: such a record was cut
// short while being written, and the log does not describe the PCRs.
func Parse(r io.Reader) ([]Record, error) {
	data, err := io.ReadAll(r)
	if err != nil {
		return nil, fmt.Errorf("event log: %w", err)
	}
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, nil
	}
	if data[0] != RS {
		return nil, fmt.Errorf("event log: does not start with the record separator 0x1E; not a JSON text sequence (RFC 7464)")
	}
	var recs []Record
	for i, chunk := range bytes.Split(data[1:], []byte{RS}) {
		n := i + 1
		if len(bytes.TrimSpace(chunk)) == 0 {
			continue // RFC 7464 allows empty texts; systemd never writes them
		}
		if chunk[len(chunk)-1] != '\n' {
			return nil, fmt.Errorf("event log: record %d is truncated (no final line feed): a writer was interrupted", n)
		}
		rec, err := parseRecord(chunk)
		if err != nil {
			return nil, fmt.Errorf("event log: record %d: %w", n, err)
		}
		recs = append(recs, rec)
	}
	return recs, nil
}

// ParseFile reads the log at path under a shared lock, as systemd's readers
// do.
func ParseFile(path string) ([]Record, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("event log: %w", err)
	}
	defer f.Close()
	if err := lockShared(f); err != nil {
		return nil, fmt.Errorf("event log %s: lock: %w", path, err)
	}
	recs, err := Parse(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return recs, nil
}

func parseRecord(b []byte) (Record, error) {
	var raw struct {
		PCR         *json.Number    `json:"pcr"`
		Digests     json.RawMessage `json:"digests"`
		ContentType *string         `json:"content_type"`
		Content     json.RawMessage `json:"content"`
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	if err := dec.Decode(&raw); err != nil {
		return Record{}, fmt.Errorf("not a JSON object: %w", err)
	}
	if dec.More() {
		return Record{}, fmt.Errorf("more than one JSON text between separators")
	}
	var rec Record
	if raw.PCR == nil {
		return rec, fmt.Errorf(`"pcr" is missing`)
	}
	pcr, err := raw.PCR.Int64()
	if err != nil || pcr < 0 || pcr >= 24 {
		return rec, fmt.Errorf(`"pcr" %s is not a PCR index 0..23`, raw.PCR.String())
	}
	rec.PCR = uint32(pcr)
	if raw.Digests == nil {
		return rec, fmt.Errorf(`"digests" is missing`)
	}
	var digests []json.RawMessage
	if err := json.Unmarshal(raw.Digests, &digests); err != nil {
		return rec, fmt.Errorf(`"digests" is not an array`)
	}
	for i, dj := range digests {
		var d struct {
			HashAlg *string `json:"hashAlg"`
			Digest  *string `json:"digest"`
		}
		if err := json.Unmarshal(dj, &d); err != nil {
			return rec, fmt.Errorf("digest %d is not an object of strings: %w", i, err)
		}
		if d.HashAlg == nil || d.Digest == nil {
			return rec, fmt.Errorf(`digest %d lacks "hashAlg" or "digest"`, i)
		}
		if _, err := hex.DecodeString(*d.Digest); err != nil || len(*d.Digest) == 0 {
			return rec, fmt.Errorf("digest %d (%s) %q is not hex", i, *d.HashAlg, *d.Digest)
		}
		rec.Digests = append(rec.Digests, Digest{HashAlg: *d.HashAlg, Digest: strings.ToLower(*d.Digest)})
	}
	if raw.ContentType != nil {
		rec.ContentType = *raw.ContentType
	}
	rec.RawContent = raw.Content
	if rec.ContentType == ContentTypeSystemd {
		if len(raw.Content) == 0 {
			return rec, fmt.Errorf(`"content" is missing from a "systemd" record`)
		}
		// Like systemd's reader, insist only on the types of "string" and
		// "eventType"; take "bootId" and "timestamp" when they fit.
		var c struct {
			String    *string `json:"string"`
			EventType *string `json:"eventType"`
			BootID    any     `json:"bootId"`
			Timestamp any     `json:"timestamp"`
		}
		dec := json.NewDecoder(bytes.NewReader(raw.Content))
		dec.UseNumber()
		if err := dec.Decode(&c); err != nil {
			return rec, fmt.Errorf(`"content" is not an object whose "string" and "eventType" are strings: %w`, err)
		}
		rec.Content = &Content{}
		if c.String != nil {
			rec.Content.String = *c.String
		}
		if c.EventType != nil {
			rec.Content.EventType = *c.EventType
		}
		if id, ok := c.BootID.(string); ok {
			rec.Content.BootID = id
		}
		if n, ok := c.Timestamp.(json.Number); ok {
			if u, err := strconv.ParseUint(n.String(), 10, 64); err == nil {
				rec.Content.Timestamp = u
			}
		}
	}
	return rec, nil
}

// ErrAborted means the log has the sticky bit set: a writer died between
// extending a PCR and logging it, so the log no longer matches the PCRs.
// systemd's writers skip such a log too.
var ErrAborted = errors.New("log was left incomplete by an interrupted writer (sticky bit set)")
