package guest

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"strings"
)

// ReadFiles reads each file named in the file list (one path a line; blank
// lines skipped) and reports it as "read:PATH" with the sha256 of its
// content, or the read error (an fs-verity object that fails its digest
// reads as EIO). A missing list reports nothing.
func ReadFiles(w io.Writer, list string) {
	f, err := os.Open(list)
	if err != nil {
		return
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		p := strings.TrimSpace(s.Text())
		if p == "" {
			continue
		}
		b, err := os.ReadFile(p)
		sum := sha256.Sum256(b)
		Check(w, "read:"+p, map[string]string{"sha256": hex.EncodeToString(sum[:])}, err)
	}
}
