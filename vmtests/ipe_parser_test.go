package vmtests

import (
	"crypto"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cfsroot/cfsroot/initramfs"
	"github.com/cfsroot/cfsroot/rootfs/ipe"
	"github.com/cfsroot/cfsroot/rootfs/signature"
	"github.com/cfsroot/cfsroot/vmtests/vm"
)

// ipeParserCases are policy texts for TestIPEPolicyParser. %s is replaced by
// a policy name unique to the case. stricter marks texts the kernel takes
// but ipe.Check refuses on purpose (they would never do what was meant).
var ipeParserCases = []struct {
	name, text string
	stricter   bool
}{
	{name: "minimal", text: "policy_name=%s policy_version=0.0.1\nDEFAULT action=ALLOW\n"},
	{name: "comments-crlf", text: "# comment\r\npolicy_name=%s policy_version=0.0.1 # trailing\r\n\r\nDEFAULT action=DENY  \r\n"},
	{name: "tabs-spaces", text: "  policy_name=%s\t policy_version=1.2.3\nDEFAULT\top=EXECUTE   action=DENY\nDEFAULT action=ALLOW"},
	{name: "per-op-defaults", text: "policy_name=%s policy_version=0.0.1\nDEFAULT op=EXECUTE action=DENY\nDEFAULT op=FIRMWARE action=ALLOW\nDEFAULT op=KMODULE action=ALLOW\nDEFAULT op=KEXEC_IMAGE action=ALLOW\nDEFAULT op=KEXEC_INITRAMFS action=ALLOW\nDEFAULT op=POLICY action=ALLOW\nDEFAULT op=X509_CERT action=ALLOW\n"},
	{name: "generated-shape", text: "policy_name=%s policy_version=0.0.1\nDEFAULT action=ALLOW\nDEFAULT op=EXECUTE action=DENY\nop=EXECUTE boot_verified=TRUE action=ALLOW\nop=EXECUTE fsverity_digest=sha256:" + strings.Repeat("0f", 32) + " action=ALLOW\nop=EXECUTE fsverity_digest=sha512:" + strings.Repeat("a0", 64) + " action=ALLOW\n"},
	{name: "properties", text: "policy_name=%s policy_version=0.0.1\nDEFAULT action=ALLOW\nop=KMODULE boot_verified=FALSE fsverity_signature=TRUE action=DENY\nop=EXECUTE dmverity_signature=TRUE action=ALLOW\nop=EXECUTE dmverity_roothash=sha256:" + strings.Repeat("11", 32) + " action=ALLOW\nop=EXECUTE action=ALLOW\n"},
	{name: "uppercase-hex", text: "policy_name=%s policy_version=0.0.1\nDEFAULT action=ALLOW\nop=EXECUTE fsverity_digest=sha256:" + strings.Repeat("AB", 32) + " action=ALLOW\n"},
	{name: "max-version", text: "policy_name=%s policy_version=65535.65535.65535\nDEFAULT action=ALLOW\n"},
	{name: "no-default", text: "policy_name=%s policy_version=0.0.1\nDEFAULT op=EXECUTE action=DENY\n"},
	{name: "duplicate-default", text: "policy_name=%s policy_version=0.0.1\nDEFAULT action=ALLOW\nDEFAULT action=DENY\n"},
	{name: "duplicate-op-default", text: "policy_name=%s policy_version=0.0.1\nDEFAULT action=ALLOW\nDEFAULT op=EXECUTE action=ALLOW\nDEFAULT op=EXECUTE action=DENY\n"},
	{name: "default-property", text: "policy_name=%s policy_version=0.0.1\nDEFAULT op=EXECUTE boot_verified=TRUE action=DENY\nDEFAULT action=ALLOW\n"},
	{name: "default-alone", text: "policy_name=%s policy_version=0.0.1\nDEFAULT action=ALLOW\nDEFAULT\n"},
	{name: "action-only", text: "policy_name=%s policy_version=0.0.1\nDEFAULT action=ALLOW\naction=ALLOW\n"},
	{name: "property-first", text: "policy_name=%s policy_version=0.0.1\nDEFAULT action=ALLOW\nboot_verified=TRUE op=EXECUTE action=ALLOW\n"},
	{name: "unknown-op", text: "policy_name=%s policy_version=0.0.1\nDEFAULT action=ALLOW\nop=READ action=ALLOW\n"},
	{name: "unknown-property", text: "policy_name=%s policy_version=0.0.1\nDEFAULT action=ALLOW\nop=EXECUTE path=/bin action=ALLOW\n"},
	{name: "action-not-last", text: "policy_name=%s policy_version=0.0.1\nDEFAULT action=ALLOW\nop=EXECUTE action=ALLOW boot_verified=TRUE\n"},
	{name: "lowercase-action", text: "policy_name=%s policy_version=0.0.1\nDEFAULT action=allow\n"},
	{name: "digest-no-alg", text: "policy_name=%s policy_version=0.0.1\nDEFAULT action=ALLOW\nop=EXECUTE fsverity_digest=" + strings.Repeat("0f", 32) + " action=ALLOW\n"},
	{name: "digest-odd-hex", text: "policy_name=%s policy_version=0.0.1\nDEFAULT action=ALLOW\nop=EXECUTE fsverity_digest=sha256:abc action=ALLOW\n"},
	{name: "digest-unknown-alg", text: "policy_name=%s policy_version=0.0.1\nDEFAULT action=ALLOW\nop=EXECUTE fsverity_digest=md5:" + strings.Repeat("0f", 16) + " action=ALLOW\n", stricter: true},
	{name: "digest-short", text: "policy_name=%s policy_version=0.0.1\nDEFAULT action=ALLOW\nop=EXECUTE fsverity_digest=sha256:0f0f action=ALLOW\n", stricter: true},
	{name: "version-two-parts", text: "policy_name=%s policy_version=0.1\nDEFAULT action=ALLOW\n"},
	{name: "version-overflow", text: "policy_name=%s policy_version=65536.0.0\nDEFAULT action=ALLOW\n"},
	{name: "version-plus", text: "policy_name=%s policy_version=+1.0.0\nDEFAULT action=ALLOW\n", stricter: true},
	{name: "header-swapped", text: "policy_version=0.0.1 policy_name=%s\nDEFAULT action=ALLOW\n"},
	{name: "header-extra", text: "policy_name=%s policy_version=0.0.1 x=y\nDEFAULT action=ALLOW\n"},
	{name: "no-header", text: "# %s\nDEFAULT action=ALLOW\n"},
	{name: "only-comments", text: "# %s\n\n   # nothing\n"},
}

// TestIPEPolicyParser checks ipe.Check against the kernel's IPE parser:
// each case is signed by a certificate in UEFI db and written to
// new_policy in the guest; the kernel must take exactly the texts Check
// accepts (but the few Check refuses on purpose), and answer EBADMSG,
// ERANGE or EINVAL (what the parser returns) for the others. The same boot
// shows the size limit: the largest policy within ipe.MaxPolicySize loads,
// one rule more is refused with EMSGSIZE, a 5.6 MB one with ENOMEM.
func TestIPEPolicyParser(t *testing.T) {
	k := vm.RequireKernel(t)
	vm.RequireTools(t, "mkfs.ext4", "openssl")
	guestBin := vm.BuildStatic(t, "./vmtests/internal/ipeguest")
	certPath, keyPath := vm.SigningCert(t, "cfsroot ipe parser db")
	key, cert := loadSignerTB(t, keyPath, certPath)
	tree := t.TempDir()
	files := map[string]string{}
	for i, c := range ipeParserCases {
		text := fmt.Sprintf(c.text, fmt.Sprintf("case_%02d", i))
		signed, err := signature.Sign([]byte(text), key, cert, signature.Options{Hash: crypto.SHA256, IncludeCertificate: true})
		if err != nil {
			t.Fatal(err)
		}
		file := fmt.Sprintf("%02d-%s.p7s", i, c.name)
		files[c.name] = file
		writeTB(t, filepath.Join(tree, "parser", file), signed)
	}
	// The same minimal policy signed with ECDSA keys (P-256, P-384), whose
	// certificates are in db too: `cfsroot policy sign` takes such keys.
	var ecCerts []string
	for _, curve := range []string{"P-256", "P-384"} {
		dir := t.TempDir()
		ecCert, ecKey := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
		runCmdTB(t, "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:"+curve, "-nodes", "-sha256",
			"-days", "3650", "-subj", "/CN=cfsroot ipe parser "+curve, "-keyout", ecKey, "-out", ecCert,
			"-addext", "keyUsage=critical,digitalSignature", "-addext", "extendedKeyUsage=codeSigning")
		k, c := loadSignerTB(t, ecKey, ecCert)
		hash := crypto.SHA256
		if curve == "P-384" {
			hash = crypto.SHA384
		}
		text := fmt.Sprintf("policy_name=ecdsa_%s policy_version=0.0.1\nDEFAULT action=ALLOW\n", strings.ReplaceAll(curve, "-", ""))
		signed, err := signature.Sign([]byte(text), k, c, signature.Options{Hash: hash, IncludeCertificate: true})
		if err != nil {
			t.Fatal(err)
		}
		writeTB(t, filepath.Join(tree, "parser", "ecdsa-"+curve+".p7s"), signed)
		ecCerts = append(ecCerts, ecCert)
	}
	// Size limits: the largest policy whose signed form fits in
	// ipe.MaxPolicySize bytes loads; one rule more is refused with
	// EMSGSIZE (the kernel's ASN.1 decoder, lib/asn1_decoder.c, takes at
	// most 65535 bytes); 50 000 rules (5.6 MB) fail earlier, with ENOMEM
	// (IPE copies a write into one kmalloc buffer, at most 4 MiB).
	signSize := func(n int) []byte { return signRulesPolicy(t, key, cert, fmt.Sprintf("size_%d", n), 1, n, nil, nil) }
	maxRules := largestPolicy(signSize)
	sizeCases := []struct {
		rules, size int
		want        string
	}{{rules: maxRules, want: "OK"}, {rules: maxRules + 1, want: "EMSGSIZE"}, {rules: 50000, want: "ENOMEM"}}
	for i, c := range sizeCases {
		signed := signSize(c.rules)
		sizeCases[i].size = len(signed)
		writeTB(t, filepath.Join(tree, "parser", fmt.Sprintf("size-%d.p7s", c.rules)), signed)
	}
	disk := vm.Ext4(t, tree, "ipeparser", "32M")
	initrd := vm.Initramfs(t, initramfs.Spec{Init: guestBin, ModuleDir: k.Modules, Modules: vm.BootModules})
	res := vm.Boot(t, vm.Options{Name: "ipeparser", Kernel: k.Image, Initramfs: initrd, Disks: []string{disk}, DBCerts: append([]string{certPath}, ecCerts...)})
	got := res.Require(t, "parser", "done")["parser"].Data

	for i, c := range ipeParserCases {
		text := fmt.Sprintf(c.text, fmt.Sprintf("case_%02d", i))
		_, cerr := ipe.Check([]byte(text))
		kernel := got[files[c.name]]
		switch {
		case kernel == "":
			t.Errorf("%s: the guest did not report it", c.name)
		case c.stricter:
			if kernel != "OK" || cerr == nil {
				t.Errorf("%s: kernel %s, Check %v; want the kernel to take it and Check to refuse it", c.name, kernel, cerr)
			}
		case cerr == nil && kernel != "OK":
			t.Errorf("%s: Check accepts it, the kernel answered %s", c.name, kernel)
		case cerr != nil && kernel == "OK":
			t.Errorf("%s: Check refuses it (%v), the kernel took it", c.name, cerr)
		case cerr != nil && kernel != "EBADMSG" && kernel != "ERANGE" && kernel != "EINVAL":
			t.Errorf("%s: the kernel answered %s, want a parser error (EBADMSG, ERANGE, EINVAL)", c.name, kernel)
		}
		t.Logf("%-22s kernel %-8s Check %v", c.name, kernel, cerr)
	}
	for _, c := range sizeCases {
		if got := got[fmt.Sprintf("size-%d.p7s", c.rules)]; got != c.want {
			t.Errorf("signed policy of %d rules (%d bytes; limit %d): the kernel answered %s, want %s", c.rules, c.size, ipe.MaxPolicySize, got, c.want)
		} else {
			t.Logf("signed policy of %d rules (%d bytes): %s", c.rules, c.size, got)
		}
	}
	for _, curve := range []string{"P-256", "P-384"} {
		if got := got["ecdsa-"+curve+".p7s"]; got != "OK" {
			t.Errorf("policy signed with ECDSA %s: the kernel answered %s", curve, got)
		}
	}
}
