package eventlog

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

var sample = Record{
	PCR: 15,
	Digests: []Digest{
		{HashAlg: "sha1", Digest: "0a0b"},
		{HashAlg: "sha256", Digest: "0c0d"},
	},
	ContentType: ContentTypeSystemd,
	Content: &Content{
		String:    "cfsroot-separator",
		BootID:    "0123456789abcdef0123456789abcdef",
		Timestamp: 1234567,
		EventType: "cfsroot-separator",
	},
}

// The bytes systemd's tpm2_userspace_log writes for such a record: RS, the
// members in its order, LF.
const sampleBytes = "\x1e" + `{"pcr":15,"digests":[{"hashAlg":"sha1","digest":"0a0b"},{"hashAlg":"sha256","digest":"0c0d"}],` +
	`"content_type":"systemd","content":{"string":"cfsroot-separator","bootId":"0123456789abcdef0123456789abcdef","timestamp":1234567,"eventType":"cfsroot-separator"}}` + "\n"

func TestEncode(t *testing.T) {
	b, err := sample.Encode()
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != sampleBytes {
		t.Errorf("Encode =\n%q\nwant\n%q", b, sampleBytes)
	}
}

func TestParse(t *testing.T) {
	other := "\x1e" + `{"pcr":11,"digests":[{"hashAlg":"sha256","digest":"AABB"},{"hashAlg":"sha3_256","digest":"00"}],"content_type":"systemd","content":{"string":"enter-initrd","bootId":7,"timestamp":-5,"eventType":"phase","extra":[1]}}` + "\n" +
		"\x1e" + `{"pcr":9,"digests":[],"content_type":"ima","content":{"whatever":true}}` + "\n"
	recs, err := Parse(strings.NewReader(sampleBytes + other))
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 3 {
		t.Fatalf("parsed %d records, want 3", len(recs))
	}
	if r := recs[0]; r.PCR != 15 || len(r.Digests) != 2 || *r.Content != *sample.Content {
		t.Errorf("record 1 = %+v %+v", r, r.Content)
	}
	if d, ok, err := recs[1].Digest("SHA256"); !ok || err != nil || !bytes.Equal(d, []byte{0xaa, 0xbb}) {
		t.Errorf("record 2 sha256 = %x %v %v", d, ok, err)
	}
	if recs[1].Content.EventType != "phase" || recs[2].Content != nil || string(recs[2].RawContent) != `{"whatever":true}` {
		t.Errorf("records 2, 3 = %+v, %+v", recs[1], recs[2])
	}
	// What Parse reads, Encode writes back byte for byte.
	b, _ := recs[0].Encode()
	if string(b) != sampleBytes {
		t.Errorf("re-encoded %q", b)
	}
	if recs, err := Parse(strings.NewReader("")); err != nil || recs != nil {
		t.Errorf("empty log: %v, %v", recs, err)
	}
}

func TestParseRefuses(t *testing.T) {
	for name, log := range map[string]string{
		"truncated":        strings.TrimSuffix(sampleBytes, "\n"),
		"truncated mid":    sampleBytes[:40],
		"no separator":     sampleBytes[1:],
		"not json":         "\x1enot json\n",
		"two texts":        "\x1e{\"pcr\":1,\"digests\":[]} {}\n",
		"no pcr":           "\x1e{\"digests\":[]}\n",
		"pcr range":        "\x1e{\"pcr\":24,\"digests\":[]}\n",
		"pcr negative":     "\x1e{\"pcr\":-1,\"digests\":[]}\n",
		"pcr float":        "\x1e{\"pcr\":1.5,\"digests\":[]}\n",
		"no digests":       "\x1e{\"pcr\":1}\n",
		"digests object":   "\x1e{\"pcr\":1,\"digests\":{}}\n",
		"digest not hex":   "\x1e{\"pcr\":1,\"digests\":[{\"hashAlg\":\"sha256\",\"digest\":\"xyz\"}]}\n",
		"digest no alg":    "\x1e{\"pcr\":1,\"digests\":[{\"digest\":\"00\"}]}\n",
		"systemd no cont":  "\x1e{\"pcr\":1,\"digests\":[],\"content_type\":\"systemd\"}\n",
		"systemd bad cont": "\x1e{\"pcr\":1,\"digests\":[],\"content_type\":\"systemd\",\"content\":{\"string\":5}}\n",
		"systemd bad type": "\x1e{\"pcr\":1,\"digests\":[],\"content_type\":\"systemd\",\"content\":{\"eventType\":[]}}\n",
		"systemd not obj":  "\x1e{\"pcr\":1,\"digests\":[],\"content_type\":\"systemd\",\"content\":[]}\n",
	} {
		if _, err := Parse(strings.NewReader(log)); err == nil {
			t.Errorf("%s: Parse(%q) accepted", name, log)
		}
	}
}

func TestWriter(t *testing.T) {
	path := filepath.Join(t.TempDir(), "run/log/systemd/tpm2-measure.log")
	w, err := OpenWriter(path)
	if err != nil {
		t.Fatal(err)
	}
	if st, _ := os.Stat(path); st.Mode() != 0o600|os.ModeSticky {
		t.Errorf("pending log mode %v, want sticky 0600", st.Mode())
	}
	if err := w.Append(sample); err != nil {
		t.Fatal(err)
	}
	w.Close()
	if st, _ := os.Stat(path); st.Mode() != 0o600 {
		t.Errorf("log mode %v after Append, want 0600", st.Mode())
	}
	w, err = OpenWriter(path)
	if err != nil {
		t.Fatal(err)
	}
	w.Append(sample)
	w.Close()
	b, _ := os.ReadFile(path)
	if string(b) != sampleBytes+sampleBytes {
		t.Errorf("log = %q", b)
	}

	// A writer that never finished leaves the log marked; writers skip it.
	w, _ = OpenWriter(path)
	w.Close()
	if _, err := OpenWriter(path); !errors.Is(err, ErrAborted) {
		t.Errorf("OpenWriter on an interrupted log = %v, want ErrAborted", err)
	}
	// Cancel clears the mark.
	os.Chmod(path, 0o600)
	w, _ = OpenWriter(path)
	w.Cancel()
	w.Close()
	if w, err := OpenWriter(path); err != nil {
		t.Errorf("OpenWriter after Cancel: %v", err)
	} else {
		w.Close()
	}

	// A symlink is not followed.
	link := filepath.Join(filepath.Dir(path), "link.log")
	os.Symlink(path, link)
	if _, err := OpenWriter(link); err == nil {
		t.Error("OpenWriter followed a symlink")
	}
}

// TestWriterLock checks writers exclude each other, as systemd's flock does:
// a second writer waits until the first is done.
func TestWriterLock(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tpm2-measure.log")
	first, err := OpenWriter(path)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan error, 1)
	go func() {
		w, err := OpenWriter(path)
		if err == nil {
			err = w.Append(sample)
			w.Close()
		}
		got <- err
	}()
	select {
	case err := <-got:
		t.Fatalf("second writer got in while the first held the lock (err %v)", err)
	case <-time.After(200 * time.Millisecond):
	}
	first.Append(Record{PCR: 1, Digests: []Digest{{HashAlg: "sha256", Digest: "00"}}})
	first.Close()
	if err := <-got; err != nil {
		t.Fatal(err)
	}
	recs, err := ParseFile(path)
	if err != nil || len(recs) != 2 || recs[0].PCR != 1 || recs[1].PCR != 15 {
		t.Errorf("records %+v (%v), want the first writer's then the second's", recs, err)
	}
}

func TestBootIDAndTime(t *testing.T) {
	id := BootID()
	if _, err := os.Stat("/proc/sys/kernel/random/boot_id"); err == nil && len(id) != 32 {
		t.Errorf("BootID = %q", id)
	}
	if strings.ContainsAny(id, "-ABCDEF") {
		t.Errorf("BootID %q has dashes or capitals", id)
	}
	if BootTime() == 0 {
		t.Error("BootTime = 0")
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(sampleBytes))
	f.Add([]byte(sampleBytes + sampleBytes[:30]))
	f.Add([]byte("\x1e{\"pcr\":1,\"digests\":[{\"hashAlg\":\"sha256\",\"digest\":\"00\"}],\"content_type\":\"systemd\",\"content\":{}}\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		recs, err := Parse(bytes.NewReader(b))
		if err != nil {
			return
		}
		// Whatever parses re-encodes and parses to the same records.
		var out []byte
		for _, r := range recs {
			e, err := r.Encode()
			if err != nil {
				t.Fatalf("Encode of a parsed record: %v", err)
			}
			out = append(out, e...)
		}
		again, err := Parse(bytes.NewReader(out))
		if err != nil || len(again) != len(recs) {
			t.Fatalf("re-parse: %d records, %v; want %d", len(again), err, len(recs))
		}
	})
}
