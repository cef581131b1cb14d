# cfsroot build and test entry points. See README.md.
export PATH := $(PATH):/usr/local/go/bin
GO ?= go
GOFLAGS_STATIC = CGO_ENABLED=0 $(GO) build -trimpath -ldflags='-s -w -buildid='

.PHONY: all build deps test unittest vmtest demo clean

all: build

build:
	mkdir -p bin
	$(GOFLAGS_STATIC) -o bin/cfsroot ./cmd/cfsroot

# deps installs missing Debian packages and fetches the test kernel (idempotent).
deps:
	tools/install-deps.sh

# test runs everything: unit tests, interop tests against fsverity-utils and
# openssl, and the VM tests (they need the packages and kernel from deps;
# CFSROOT_VMTEST=1 makes anything missing a failure rather than a skip).
# CFSROOT_DEMO_TEST=1 includes TestDemo, the Debian root booted through
# cfsroot (debootstrap 2-3 min the first time, cached; then ~2 min).
test: deps
	CFSROOT_VMTEST=1 CFSROOT_DEMO_TEST=1 $(GO) test -count=1 -timeout 40m ./...

# unittest skips the VM tests.
unittest:
	CFSROOT_VMTEST=0 $(GO) test -count=1 ./...

vmtest: deps
	CFSROOT_VMTEST=1 CFSROOT_DEMO_TEST=1 $(GO) test -count=1 -timeout 40m -v ./vmtests/...

# demo builds a Debian root, signs it with throwaway keys, and boots it
# through cfsroot in QEMU with a TPM, printing what was verified (demo/demo.sh).
demo:
	demo/demo.sh

clean:
	rm -rf bin out
