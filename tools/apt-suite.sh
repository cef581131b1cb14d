#!/usr/bin/env bash
# apt-suite.sh SUITE APT-GET-ARGS...
#
# Runs apt-get with one more suite (trixie, bookworm-backports, ...) of the
# Debian mirror the machine already uses, next to the machine's own sources,
# without touching the machine's apt configuration: the extra sources list,
# the package lists and the download cache are private, under
# $CFSROOT_CACHE/apt-SUITE (default .cache/apt-SUITE in the repository).
# Use -t SUITE with install so that only what needs the suite comes from it.
#
# The mirror comes from tools/debian-mirror.sh (the machine's own apt sources),
# so no host name is written down here.
#
#   tools/apt-suite.sh trixie download linux-image-6.12.57+deb13-amd64
#   tools/apt-suite.sh bookworm-backports install -y -t bookworm-backports python3-virt-firmware
set -euo pipefail

suite=${1:?usage: apt-suite.sh SUITE APT-GET-ARGS...}
shift
top=$(cd "$(dirname "$0")/.." && pwd)
cache=${CFSROOT_CACHE:-$top/.cache}
dir=$cache/apt-$suite

mkdir -p "$dir/lists/partial" "$dir/archives/partial"
# One apt run per private directory at a time (apt's own locks would make
# a concurrent caller fail rather than wait).
exec 8>"$dir/run.lock"
flock 8
if [ ! -s "$dir/sources.list" ]; then
	m=$("$top/tools/debian-mirror.sh")
	keyring=/usr/share/keyrings/debian-archive-keyring.gpg
	echo "deb [signed-by=$keyring] $m $suite main" >"$dir/sources.list.tmp"
	mv "$dir/sources.list.tmp" "$dir/sources.list"
fi

opts=(
	-o "Dir::Etc::SourceList=$dir/sources.list"
	-o "Dir::State::Lists=$dir/lists"
	-o "Dir::Cache::Archives=$dir/archives"
	-o "Dir::Cache::pkgcache="
	-o "Dir::Cache::srcpkgcache="
	-o "APT::Get::List-Cleanup=0"
)
# Refresh the private lists at most once a day.
if [ -z "$(find "$dir/updated" -mtime -1 2>/dev/null)" ]; then
	apt-get "${opts[@]}" -qq update >&2
	touch "$dir/updated"
fi
exec apt-get "${opts[@]}" "$@"
