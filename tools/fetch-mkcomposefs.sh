#!/usr/bin/env bash
# fetch-mkcomposefs.sh: provides the reference mkcomposefs and composefs-info
# (composefs 1.0.8 from Debian sid) on Debian 12, as the oracle of the image
# tests, and composefs 1.0.8's own test vectors (tests/assets of
# github.com/containers/composefs v1.0.8, fetched into the Go module cache
# with `go mod download`, checked by the go command against sum.golang.org;
# internal/testutil reads them there). Prints the path of the mkcomposefs
# wrapper; composefs-info is beside it. Idempotent: the tools are cached in
# .cache/composefs-sid/.
#
# bookworm and trixie have no composefs package. sid's binaries run on
# bookworm's glibc 2.36 except that mkcomposefs imports two C23 aliases
# (__isoc23_strtoull and __isoc23_strtol, GLIBC_2.38); for the bases it uses
# (8 and 10) they behave exactly like strtoull and strtol, so a copy of the
# binary is patched to import those instead (symbol names and the version
# requirement in .gnu.version_r). Nothing else is changed, and the script
# checks the result against a vector's expected sha256.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cache=${CFSROOT_CACHE:-$top/.cache}
dir=$cache/composefs-sid
want_version=1.0.8

# The test vectors, from the Go module proxy (outside any module, so no
# go.mod is touched).
gobin=$(command -v go || echo /usr/local/go/bin/go)
assets=$(cd / && "$gobin" mod download -json "github.com/containers/composefs@v$want_version" |
	sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')/tests/assets
[ -f "$assets/special.dump.sha256" ] || {
	echo "fetch-mkcomposefs: go mod download github.com/containers/composefs@v$want_version gave no tests/assets" >&2
	exit 1
}

if [ -x "$dir/bin/mkcomposefs" ] && [ -f "$dir/ok" ]; then
	echo "$dir/bin/mkcomposefs"
	exit 0
fi

command -v python3 >/dev/null || { echo "fetch-mkcomposefs: python3 is needed to patch the binary" >&2; exit 1; }
rm -rf "$dir"
mkdir -p "$dir/debs" "$dir/root" "$dir/bin"
chmod 777 "$dir/debs" # apt downloads as the _apt user when it can
(cd "$dir/debs" && "$top/tools/apt-suite.sh" sid download composefs libcomposefs1 >&2)
for deb in "$dir"/debs/*.deb; do
	case $deb in
	*_${want_version}-*) ;;
	*) echo "fetch-mkcomposefs: sid now has $(basename "$deb"), not $want_version; the vectors are $want_version's" >&2 ;;
	esac
	dpkg-deb -x "$deb" "$dir/root"
done
lib=$dir/root/usr/lib/x86_64-linux-gnu
[ -e "$lib/libcomposefs.so.1" ] || ln -s "$(cd "$lib" && ls libcomposefs.so.1.* | head -1)" "$lib/libcomposefs.so.1"
cp "$dir/root/usr/bin/mkcomposefs" "$dir/mkcomposefs.patched"

python3 - "$dir/mkcomposefs.patched" <<'EOF'
import struct, sys
path = sys.argv[1]
b = bytearray(open(path, 'rb').read())
assert b[:4] == b'\x7fELF' and b[4] == 2 and b[5] == 1, 'not a little-endian ELF64 file'
shoff, = struct.unpack_from('<Q', b, 0x28)
shentsize, shnum, shstrndx = struct.unpack_from('<HHH', b, 0x3a)
secs = []
for i in range(shnum):
    name, typ, flags, addr, off, size, link, info, align, entsize = struct.unpack_from('<IIQQQQIIQQ', b, shoff + i * shentsize)
    secs.append(dict(name=name, off=off, size=size))
shstr = secs[shstrndx]
def secname(s):
    o = shstr['off'] + s['name']
    return bytes(b[o:b.index(0, o)]).decode()
by = {secname(s): s for s in secs}
dynstr, dynsym, verneed = by['.dynstr'], by['.dynsym'], by['.gnu.version_r']
def dstr(o):
    o += dynstr['off']
    return bytes(b[o:b.index(0, o)])
def elfhash(name):
    h = 0
    for c in name:
        h = (h << 4) + c
        g = h & 0xf0000000
        if g:
            h ^= g >> 24
        h &= ~g
    return h & 0xffffffff
# The GLIBC_2.38 requirement becomes a second GLIBC_2.2.5 one.
vn = {}
off = verneed['off']
while True:
    vn_version, vn_cnt, vn_file, vn_aux, vn_next = struct.unpack_from('<HHIII', b, off)
    a = off + vn_aux
    for _ in range(vn_cnt):
        vna_hash, vna_flags, vna_other, vna_name, vna_next = struct.unpack_from('<IHHII', b, a)
        vn[dstr(vna_name)] = (a, vna_name)
        a += vna_next
    if not vn_next:
        break
    off += vn_next
if b'GLIBC_2.38' in vn:
    a38, _ = vn[b'GLIBC_2.38']
    _, name225 = vn[b'GLIBC_2.2.5']
    struct.pack_into('<I', b, a38, elfhash(b'GLIBC_2.2.5'))
    struct.pack_into('<I', b, a38 + 8, name225)
# __isoc23_strtoull -> strtoull, __isoc23_strtol -> strtol.
names = [struct.unpack_from('<I', b, dynsym['off'] + i * 24)[0] for i in range(dynsym['size'] // 24)]
for st_name in set(names):
    s = dstr(st_name)
    if s.startswith(b'__isoc23_'):
        assert s in (b'__isoc23_strtoull', b'__isoc23_strtol'), s
        end = st_name + len(s)
        assert not any(st_name < n <= end for n in names), 'string shared with another symbol'
        new = s[len(b'__isoc23_'):]
        o = dynstr['off'] + st_name
        b[o:o + len(s)] = new + b'\0' * (len(s) - len(new))
open(path, 'wb').write(b)
EOF

for tool in mkcomposefs composefs-info; do
	bin=$dir/root/usr/bin/$tool
	[ "$tool" = mkcomposefs ] && bin=$dir/mkcomposefs.patched
	cat >"$dir/bin/$tool" <<EOF
#!/bin/sh
# composefs $want_version from Debian sid, see tools/fetch-mkcomposefs.sh
LD_LIBRARY_PATH="$lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}" exec "$bin" "\$@"
EOF
	chmod +x "$dir/bin/$tool"
done

# Self-check against an upstream vector.
tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT
CFS_PARSE_STRICT=1 "$dir/bin/mkcomposefs" --min-version=0 --max-version=0 --from-file "$assets/special.dump" "$tmp"
got=$(sha256sum "$tmp" | cut -d' ' -f1)
[ "$got" = "$(cat "$assets/special.dump.sha256")" ] || {
	echo "fetch-mkcomposefs: the patched mkcomposefs does not reproduce special.dump ($got)" >&2
	exit 1
}
touch "$dir/ok"
echo "$dir/bin/mkcomposefs"
