#!/usr/bin/env bash
# install-deps.sh: installs, with apt, what building and testing cfsroot needs
# on a Debian 12 (bookworm) machine, and fetches the test kernel. Idempotent:
# a second run installs nothing. Needs root (or sudo) only when something is
# missing. The machine's apt configuration is left as it is; packages from
# other suites go through tools/apt-suite.sh.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"

# command -> package (bookworm)
declare -A want=(
	[fsverity]=fsverity
	[openssl]=openssl
	[qemu-system-x86_64]=qemu-system-x86
	[swtpm]=swtpm
	[swtpm_setup]=swtpm-tools
	[mkfs.ext4]=e2fsprogs
	[mkfs.erofs]=erofs-utils
	[depmod]=kmod
	[cpio]=cpio
	[xz]=xz-utils
	[zstd]=zstd
	[gcc]=gcc
	[jq]=jq
	[debootstrap]=debootstrap # make demo and TestDemo build a Debian root
)
missing=()
for cmd in "${!want[@]}"; do
	command -v "$cmd" >/dev/null 2>&1 || missing+=("${want[$cmd]}")
done
[ -f /usr/share/OVMF/OVMF_CODE_4M.fd ] || missing+=(ovmf)
if [ ${#missing[@]} -gt 0 ]; then
	echo "install-deps: installing ${missing[*]}" >&2
	$sudo apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi

# virt-fw-vars (OVMF variable stores with a test certificate in db) is only in
# bookworm-backports for bookworm.
if ! command -v virt-fw-vars >/dev/null 2>&1; then
	echo "install-deps: installing python3-virt-firmware from bookworm-backports" >&2
	DEBIAN_FRONTEND=noninteractive $sudo "$top/tools/apt-suite.sh" bookworm-backports \
		install -y -qq --no-install-recommends -t bookworm-backports python3-virt-firmware >&2
fi

if ! command -v go >/dev/null 2>&1 && [ -x /usr/local/go/bin/go ]; then
	echo "install-deps: Go is at /usr/local/go/bin; add it to PATH" >&2
fi

"$top/tools/fetch-kernel.sh" >/dev/null
# Bookworm's kernel: its config is what kernel-check must refuse (tests).
"$top/tools/fetch-kernel.sh" bookworm >/dev/null
# Reference mkcomposefs/composefs-info (oracle of the composefs directory-mode tests).
"$top/tools/fetch-mkcomposefs.sh" >/dev/null
