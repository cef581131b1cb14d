# cfsroot build and test entry points. See README.md.
export PATH := $(PATH):/usr/local/go/bin
GO ?= go
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)
GOFLAGS_STATIC = CGO_ENABLED=0 $(GO) build -trimpath -ldflags='-s -w -buildid='

.PHONY: all build deps test unittest vmtest require-root demo clean

all: build

build:
	mkdir -p bin
	$(GOFLAGS_STATIC) -o bin/cfsroot ./cmd/cfsroot

# deps installs missing Debian packages and fetches everything the tests
# download: the test kernels, the reference mkcomposefs, the composefs test
# vectors and the demo's Debian root (idempotent; cached in .cache).
deps:
	tools/install-deps.sh
	$(SUDO) demo/mkroot.sh debian >/dev/null

# test runs everything as root: unit tests, interop tests against
# fsverity-utils, openssl and mkcomposefs, the VM tests and the demo.
# CFSROOT_STRICT=1 makes every missing tool, kernel, oracle or privilege a
# failure that says what to run, never a skip (internal/testutil.Strict).
# CFSROOT_DEMO_TEST=1 includes TestDemo, the Debian root booted through
# cfsroot (~2 min). CFSROOT_LIFE_POWERCUTS=all makes TestLife cut the power
# at every one of the 22 points where an update changes the disk, one boot
# each (~4.5 min).
test: require-root deps
	CFSROOT_STRICT=1 CFSROOT_DEMO_TEST=1 CFSROOT_LIFE_POWERCUTS=all $(GO) test -count=1 -timeout 40m ./...

# unittest runs the host tests only (go test -short skips the VM tests);
# a test whose tool, kernel or privilege is missing skips.
unittest:
	$(GO) test -short -count=1 ./...

vmtest: require-root deps
	CFSROOT_STRICT=1 CFSROOT_DEMO_TEST=1 CFSROOT_LIFE_POWERCUTS=all $(GO) test -count=1 -timeout 40m -v ./vmtests/...

require-root:
	@if [ "$$(id -u)" -ne 0 ]; then \
		echo "make $(MAKECMDGOALS): the tests mount images, make device nodes and boot VMs as root: run sudo make $(MAKECMDGOALS)" >&2; \
		exit 1; \
	fi

# demo builds a Debian root, signs it with throwaway keys, and boots it
# through cfsroot in QEMU with a TPM, printing what was verified (demo/demo.sh).
demo:
	demo/demo.sh

clean:
	rm -rf bin out
