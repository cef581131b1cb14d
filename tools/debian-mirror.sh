#!/usr/bin/env bash
# debian-mirror.sh: prints the Debian mirror the machine's apt sources use
# (the first URI that is not the security archive, from deb822 .sources
# files or one-line .list files), so that scripts fetch from it without a
# host name written down anywhere.
set -euo pipefail
for f in /etc/apt/sources.list.d/*.sources; do
	[ -f "$f" ] || continue
	uri=$(awk '/^URIs:/ {print $2; exit}' "$f")
	case $uri in *debian-security*|"") continue ;; esac
	echo "$uri"
	exit 0
done
for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
	[ -f "$f" ] || continue
	uri=$(awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { print $i; exit } }' "$f" |
		grep -v debian-security | head -n1 || true)
	if [ -n "$uri" ]; then
		echo "$uri"
		exit 0
	fi
done
echo "debian-mirror.sh: no Debian mirror found in /etc/apt/sources.list*" >&2
exit 1
