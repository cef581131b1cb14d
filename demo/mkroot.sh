#!/usr/bin/env bash
# mkroot.sh [debian|busybox]
#
# Builds the root tree the demo signs and boots, caches it, and prints its
# path. "debian" (default): Debian trixie, debootstrap --variant=minbase
# with systemd, udev and tpm2-tools, from the Debian mirror the machine's
# apt sources name (no host name is written down here). It is built into a
# temporary directory and renamed when complete, so an interrupted run
# leaves nothing that looks finished; later runs reuse it (about 190 MB,
# 2-3 minutes to build). The cache key is the suite and the package list:
# changing either builds a new tree.
#
# The tree is cleaned the way an appliance image would be: no apt
# package lists or downloaded .debs (they are not needed to run), and a
# hostname. Nothing else is changed: the demo adds its report service on a
# copy (see vmtests/demo_test.go).
#
# Environment: CFSROOT_CACHE (default .cache in the repository).
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cache=${CFSROOT_CACHE:-$top/.cache}/demo
kind=${1:-debian}

suite=trixie
packages=systemd,systemd-sysv,udev,tpm2-tools

case $kind in
debian) ;;
*)
	echo "mkroot.sh: unknown root kind $kind (want debian)" >&2
	exit 2
	;;
esac

key=$(printf '%s\n' "$suite" "$packages" "v1" | sha256sum | cut -c1-12)
dest=$cache/debian-$suite-$key
if [ -f "$dest.complete" ] && [ -d "$dest" ]; then
	echo "$dest"
	exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
	echo "mkroot.sh: debootstrap needs root: run make demo as root or with sudo" >&2
	exit 1
fi
command -v debootstrap >/dev/null 2>&1 || {
	echo "mkroot.sh: installing debootstrap" >&2
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >&2
}
[ -f "/usr/share/debootstrap/scripts/$suite" ] || {
	echo "mkroot.sh: this debootstrap does not know $suite; install a newer debootstrap (bookworm's 1.0.128 does)" >&2
	exit 1
}

m=${CFSROOT_DEMO_MIRROR:-$("$top/tools/debian-mirror.sh")}
tmp=$dest.tmp
rm -rf "$tmp"
mkdir -p "$cache"
log=$cache/debootstrap-$key.log
echo "mkroot.sh: debootstrap $suite minbase + $packages from $m into $tmp (2-3 minutes; log $log)" >&2
start=$(date +%s)
if ! debootstrap --variant=minbase --include="$packages" --components=main \
	"$suite" "$tmp" "$m" >"$log" 2>&1; then
	tail -n 20 "$log" >&2
	echo "mkroot.sh: debootstrap failed (full log $log)" >&2
	exit 1
fi
# An appliance root does not need apt's lists or downloaded packages.
rm -rf "$tmp"/var/cache/apt/archives/*.deb "$tmp"/var/cache/apt/*.bin "$tmp"/var/lib/apt/lists/*
echo cfsroot-demo >"$tmp/etc/hostname"
rm -rf "$dest" "$dest.complete"
mv "$tmp" "$dest"
touch "$dest.complete"
echo "mkroot.sh: root tree ready in $(( $(date +%s) - start )) s: $dest ($(du -sh "$dest" | cut -f1))" >&2
echo "$dest"
