package kernelcfg

import (
	"bytes"
	"testing"
)

// FuzzParse feeds arbitrary bytes to Parse and everything it accepts to
// Check: neither may panic, and an accepted config has options.
func FuzzParse(f *testing.F) {
	f.Add([]byte(header + "CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_LSM=\"ipe\"\n"))
	f.Add([]byte("CONFIG_S=\"a\\\"b\"\r\n"))
	f.Add([]byte{0x1f, 0x8b, 8, 0})
	f.Add(Fragment())
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse(bytes.NewReader(data))
		if err != nil {
			return
		}
		if len(c.Values) == 0 {
			t.Fatal("accepted a config without options")
		}
		Check(c, CheckOptions{Cmdline: string(data)})
	})
}
