#!/usr/bin/env bash
# demo.sh: what `make demo` runs. On a Debian 12 machine (root or sudo) it
#
#   1. installs what it needs (tools/install-deps.sh: QEMU, swtpm, OVMF,
#      virt-fw-vars, fsverity-utils, openssl, e2fsprogs; the Debian trixie
#      6.12 kernel into .cache/kernel; debootstrap),
#   2. builds a Debian trixie root with systemd and tpm2-tools
#      (demo/mkroot.sh; cached in .cache/demo, 2-3 minutes the first time),
#   3. runs TestDemo (vmtests/demo_test.go), which does what the README's
#      "Build a signed appliance" section tells you to do: throwaway keys,
#      cfsroot mkimage --digest-store, cfsroot sign, cfsroot policy
#      generate|sign, cfsroot pcr predict, mkinitramfs.sh, an ext4 disk,
#      a provisioning boot that enables fs-verity, then the boot with a TPM,
#      and prints what was verified.
#
# Outputs (keys, image, disk, initramfs) stay in out/demo, console logs in
# out/vmtest. The keys are throwaway: never use them for anything else.
# Exit status 0 only if every check held.
#
# Environment:
#   DEMO_ROOT=DIR       boot your own root tree (needs systemd and tpm2-tools)
#   DEMO_ROOT=minimal   boot a root whose only program is the report program (about
#                       30 s, no debootstrap); its IPE policy is loaded and enforced
#   CFSROOT_DEMO_IPE=0  do not try to load an IPE policy
#   CFSROOT_DEMO_UPPER=none  boot the root read-only instead of with a tmpfs upper layer
#   DEMO_VERBOSE=1      show the whole console of both VMs
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
export PATH=$PATH:/usr/local/go/bin

if [ "$(id -u)" -ne 0 ]; then
	if command -v sudo >/dev/null 2>&1; then
		echo "demo: re-running as root with sudo (debootstrap, mkfs and QEMU's disk images need it)" >&2
		exec sudo --preserve-env=DEMO_ROOT,CFSROOT_DEMO_IPE,CFSROOT_DEMO_UPPER,DEMO_VERBOSE,CFSROOT_CACHE env "PATH=$PATH" "$0" "$@"
	fi
	echo "demo: run as root or install sudo" >&2
	exit 1
fi
command -v go >/dev/null 2>&1 || {
	echo "demo: the Go toolchain (1.26 or newer) is needed: install it to /usr/local/go (https://go.dev/dl/)" >&2
	exit 1
}

step() { printf '\n=== %s\n' "$*" >&2; }

step "1/3 installing dependencies (tools/install-deps.sh)"
tools/install-deps.sh
command -v debootstrap >/dev/null 2>&1 || {
	echo "demo: installing debootstrap" >&2
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >&2
}

step "2/3 root tree"
if [ "${DEMO_ROOT:-}" = minimal ]; then
	root=minimal
	echo "demo: minimal root (the report program as /sbin/init)" >&2
elif [ -n "${DEMO_ROOT:-}" ]; then
	root=$(cd "$DEMO_ROOT" && pwd)
	echo "demo: using DEMO_ROOT=$root" >&2
else
	root=$(demo/mkroot.sh debian)
	echo "demo: Debian root tree $root" >&2
fi

step "3/3 sign, provision and boot (vmtests TestDemo; 1-3 minutes under TCG)"
mkdir -p out
log=out/demo.log
filter() {
	if [ "${DEMO_VERBOSE:-0}" = 1 ]; then
		cat
	else
		# The demo's own lines, cfsroot's and systemd's milestones, and the summary.
		grep --line-buffered -E 'demo:|s\] cfsroot: \[|Reached target|Startup finished|cfsroot-demo-report|provision: fs-verity|VM demo|^\s{8}|FAIL|^(ok|PASS)' || true
	fi
}
set +e
CFSROOT_STRICT=1 CFSROOT_DEMO_TEST=1 CFSROOT_DEMO_ROOT="$root" CFSROOT_DEMO_OUT="$top/out/demo" \
	go test -count=1 -timeout 60m -run '^TestDemo$' -v ./vmtests/ 2>&1 | tee "$log" | filter
rc=${PIPESTATUS[0]}
set -e
echo >&2
if [ "$rc" -eq 0 ]; then
	echo "demo: every check held. Full output: $log; keys, image and disk: out/demo" >&2
else
	echo "demo: FAILED (exit $rc). Full output: $log; console logs: out/vmtest/TestDemo-*.log" >&2
fi
exit "$rc"
