#!/usr/bin/env bash
# fetch-kernel.sh [SUITE]
#
# Fetches the kernel that Debian SUITE (default: trixie) ships as
# linux-image-amd64 from the machine's own Debian mirror (see apt-suite.sh),
# extracts it into $CFSROOT_CACHE/kernel/VERSION (default .cache/kernel/VERSION)
# with modules.dep made by depmod, and prints that directory. The directory
# holds vmlinuz, config, version (the release, VERSION) and
# lib/modules/VERSION; .cache/kernel/SUITE links to it. A second run finds
# the cache and only prints it (no network).
#
# VMTEST_KERNEL (a bzImage) overrides the kernel in the VM tests; this script
# is then not needed.
set -euo pipefail

case ${1:-} in
-h | -help | --help)
	sed -n '2,/^set -e/{/^set -e/d;s/^# \{0,1\}//;p}' "$0"
	exit 0
	;;
-*)
	echo "fetch-kernel.sh: unknown option $1 (usage: fetch-kernel.sh [SUITE])" >&2
	exit 2
	;;
esac
suite=${1:-trixie}
top=$(cd "$(dirname "$0")/.." && pwd)
cache=${CFSROOT_CACHE:-$top/.cache}
link=$cache/kernel/$suite

if [ -f "$link/vmlinuz" ] && [ -f "$link/.complete" ]; then
	readlink -f "$link"
	exit 0
fi

# Tests in several packages may ask at once: one fetches, the others wait
# and then find the cache.
mkdir -p "$cache/kernel"
exec 9>"$cache/kernel/.lock-$suite"
flock 9
if [ -f "$link/vmlinuz" ] && [ -f "$link/.complete" ]; then
	readlink -f "$link"
	exit 0
fi

apt_suite=$top/tools/apt-suite.sh
lists=$cache/apt-$suite
"$apt_suite" "$suite" -qq check >/dev/null 2>&1 || true # make sure the lists exist
opts=(-o "Dir::Etc::SourceList=$lists/sources.list" -o "Dir::State::Lists=$lists/lists"
	-o "Dir::Cache::pkgcache=" -o "Dir::Cache::srcpkgcache=")

# The metapackage of SUITE names the versioned image package it depends on.
meta_version=$(apt-cache "${opts[@]}" madison linux-image-amd64 |
	awk -F' *\\| *' -v s="$suite" '$3 ~ (" " s "/") {print $2; exit}')
[ -n "$meta_version" ] || { echo "fetch-kernel.sh: no linux-image-amd64 in suite $suite" >&2; exit 1; }
pkg=$(apt-cache "${opts[@]}" show "linux-image-amd64=$meta_version" |
	sed -n 's/^Depends: .*\(linux-image-[0-9][^ ,]*-amd64\)\( \|,\|$\).*/\1/p' | head -n1)
[ -n "$pkg" ] || { echo "fetch-kernel.sh: cannot tell which image linux-image-amd64=$meta_version depends on" >&2; exit 1; }
kver=${pkg#linux-image-}

work=$(mktemp -d "$cache/kernel-fetch.XXXXXX")
trap 'rm -rf "$work"' EXIT
(cd "$work" && "$apt_suite" "$suite" -qq download "$pkg" >&2)
deb=$(ls "$work"/*.deb)
dest=$cache/kernel/$kver
rm -rf "$dest.tmp"
mkdir -p "$dest.tmp"
dpkg-deb -x "$deb" "$dest.tmp/root"
mv "$dest.tmp/root/boot/vmlinuz-$kver" "$dest.tmp/vmlinuz"
mv "$dest.tmp/root/boot/config-$kver" "$dest.tmp/config"
mkdir -p "$dest.tmp/lib/modules"
mv "$dest.tmp/root/lib/modules/$kver" "$dest.tmp/lib/modules/$kver" 2>/dev/null ||
	mv "$dest.tmp/root/usr/lib/modules/$kver" "$dest.tmp/lib/modules/$kver"
rm -rf "$dest.tmp/root"
depmod -b "$dest.tmp" "$kver"
echo "$kver" >"$dest.tmp/version"
touch "$dest.tmp/.complete"
rm -rf "$dest"
mv "$dest.tmp" "$dest"
ln -sfn "$kver" "$link"
echo "$dest"
