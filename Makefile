# snapvmm build, test and guest targets. `make run` and `make test` are the
# two commands of the README.
GO       ?= go
BUILD    := build
BIN      := $(BUILD)/snapvmm
VERSION  ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
GUESTS   := hello counter timer smp fpu smpcount blk fill hostile scribble scribbler rng
# Guests that run only in ring 3 take guest_main from user.s.
USERGUESTS := hello counter fpu blk fill hostile scribble scribbler rng
GUESTSRC := testdata/guests/src
GUEST_CACHE ?= $(HOME)/.cache/snapvmm/guest

.PHONY: all build test test-nested e2e e2e-terminal run stress bench testguests-present testguests guest guest-deps clean vet fmt

all: build

build: $(BIN)

$(BIN): $(shell find . -name '*.go' -not -path './build/*') go.mod go.sum
	$(GO) build -ldflags "-X main.version=$(VERSION)" -o $(BIN) ./cmd/snapvmm

# KVM_OK is "yes" where /dev/kvm opens: the KVM tests then run natively.
# Elsewhere they run inside a machine emulated by QEMU (TCG) with nested
# SVM, where Debian's kernel provides kvm-amd (tests/nested).
KVM_OK := $(shell [ -c /dev/kvm ] && (exec 3<>/dev/kvm) 2>/dev/null && echo yes)
HAVE_QEMU := $(shell command -v qemu-system-x86_64 >/dev/null 2>&1 && echo yes)
# PVM is "yes" where /dev/kvm is the nested PVM kind (docs/architecture.md):
# the tiny-guest tests run there natively, but Linux user space cannot, and
# the hardware-style KVM paths are never taken. HW_KVM is "yes" only for
# KVM that can run the Linux guest to its shell.
PVM := $(shell [ -d /sys/module/kvm_pvm ] && ! grep -qE '\b(vmx|svm)\b' /proc/cpuinfo && echo yes)
HW_KVM := $(if $(filter yes,$(KVM_OK)),$(if $(filter yes,$(PVM)),,yes),)

# The workflow's linter, fetched by the Go module proxy (not a dependency
# of snapvmm, so not in go.mod).
ACTIONLINT ?= github.com/rhysd/actionlint/cmd/actionlint@v1.7.12

# Unit tests, the CI workflow's lint and the tiny-guest KVM tests: natively
# where /dev/kvm opens, and, unless it is hardware KVM, again inside the
# nested machine (without /dev/kvm the native run skips them, saying why;
# on a PVM host the nested run covers the hardware-style KVM paths PVM
# never takes). One package at a time (-p 1): the latency bounds of the
# monitor tests must not compete with a Linux boot in another package for
# the two cores.
test: build
	$(GO) vet ./...
	$(GO) run $(ACTIONLINT) .github/workflows/ci.yml
	$(GO) test -count=1 -p 1 ./...
ifneq ($(HW_KVM),yes)
ifeq ($(HAVE_QEMU),yes)
	$(GO) run ./tests/nested -pkgs kvm,vmm,cmd/snapvmm
	@# The monitor's 100 ms polling bound needs a second emulated CPU.
	$(GO) run ./tests/nested -pkgs qmp -smp 2 -pin
else
	@echo "make test: no hardware KVM here and qemu-system-x86_64 is missing: the nested KVM tests were skipped (apt-get install qemu-system-x86 qemu-utils runs them)"
endif
endif

# Only the KVM tests, in the nested machine (NESTEDFLAGS: see
# go run ./tests/nested -h).
test-nested:
	$(GO) run ./tests/nested $(NESTEDFLAGS)

# Rebuild the committed test-guest ELF files (needs GNU as and ld).
testguests:
	@mkdir -p $(BUILD)/guests
	as --64 -o $(BUILD)/guests/start.o $(GUESTSRC)/start.s
	as --64 -o $(BUILD)/guests/lib.o $(GUESTSRC)/lib.s
	as --64 -o $(BUILD)/guests/user.o $(GUESTSRC)/user.s
	@for g in $(GUESTS); do \
		user=; case " $(USERGUESTS) " in *" $$g "*) user=$(BUILD)/guests/user.o;; esac; \
		as --64 -o $(BUILD)/guests/$$g.o $(GUESTSRC)/$$g.s && \
		ld -static -nostdlib -z max-page-size=4096 --no-warn-rwx-segments -T $(GUESTSRC)/link.ld \
			-o testdata/guests/$$g $(BUILD)/guests/start.o $(BUILD)/guests/lib.o $$user $(BUILD)/guests/$$g.o || exit 1; \
		echo "built testdata/guests/$$g"; \
	done

# The Linux test guest: kernel from Debian's linux-source-6.1 with
# tests/guest/snapvmm.config (built once, cached by hash in $(GUEST_CACHE)),
# and a busybox initramfs written by Go code.
guest-deps:
	@dpkg -s linux-source-6.1 flex bison bc libelf-dev libssl-dev busybox-static >/dev/null 2>&1 || \
		{ apt-get update -qq && apt-get install -y -qq linux-source-6.1 flex bison bc libelf-dev libssl-dev busybox-static; }

guest: $(BUILD)/guest/bzImage $(BUILD)/guest/initramfs.cpio.gz

$(BUILD)/guest/bzImage: tests/guest/snapvmm.config tests/guest/pvm.sed tests/guest/build-kernel.sh
	GUEST_CACHE=$(GUEST_CACHE) bash tests/guest/build-kernel.sh $(BUILD)/guest

$(BUILD)/guest/initramfs.cpio.gz: tests/guest/mkinitramfs/main.go internal/cpio/cpio.go
	$(GO) run ./tests/guest/mkinitramfs -o $(BUILD)/guest

# Boot the Linux guest to its shell, run commands, snapshot it, use its
# virtio disk and start it warm from a snapshot (examples/warm-start.sh,
# cold-vs-warm ratio): on hardware KVM natively, elsewhere (no /dev/kvm, or
# a PVM host where Linux user space cannot run) inside the nested machine
# (full boot, nested SVM).
# Then make run as a person uses it, driven through a pseudo-terminal
# (types uname -a and echo $((6*7)), quits with Ctrl-a x, compares stty
# -g; also ends it with signals): on the host, where make run itself goes
# into the nested machine when it must.
E2E_TERMINAL = $(GO) test -count=1 -tags e2e -v -timeout 20m -run '^TestTerminal' ./tests/linux/
e2e: build guest
ifeq ($(HW_KVM),yes)
	$(GO) test -count=1 -tags e2e -v -timeout 15m -run 'E2E|Banner' ./tests/linux/
else
	$(GO) run ./tests/nested -pkgs= -e2e -smp 2 -pin -run 'E2E|Banner'
endif
	$(E2E_TERMINAL)

# Only the pseudo-terminal tests of make e2e.
e2e-terminal: build guest
	$(E2E_TERMINAL)

# Build everything and boot the Linux guest with its console here (without
# /dev/kvm inside the nested machine); QMP on build/qmp.sock.
run: build
	@bash tests/guest/run.sh

# snapshot-save/load of snapvmm against QEMU 7.2 on the same machine
# (docs/benchmarks.md). BENCHFLAGS=-json for machines. Without hardware KVM
# both run inside the nested machine (tests/nested/bench.sh).
bench: build testguests-present
ifeq ($(HW_KVM),yes)
	$(GO) run ./tests/bench $(BENCHFLAGS)
else
	BENCHFLAGS="$(BENCHFLAGS)" $(GO) run ./tests/nested -smp 2 -mem 14336 -timeout 60m -script tests/nested/bench.sh \
		-tools qemu-system-x86_64 -data /usr/share/qemu,/usr/share/seabios,/usr/lib/x86_64-linux-gnu/qemu
endif

testguests-present:
	@test -f testdata/guests/fill || { echo "testdata/guests/fill is missing: make testguests"; exit 1; }

# Every fuzz target for FUZZTIME each (QCOW2_FUZZTIME for the qcow2 opener
# and the snapshot table parser; crashers land in testdata/fuzz and are
# kept there as regression inputs; minimizing a new input is kept short,
# or it stalls the run for a minute each time), the long corruption corpus,
# then 50 kill -9 rounds.
FUZZTIME ?= 15s
QCOW2_FUZZTIME ?= 10m
stress:
	@for t in $$(grep -rl --include='*_test.go' '^func Fuzz' . | xargs -n1 dirname | sort -u); do \
		for f in $$(grep -h '^func Fuzz' $$t/*_test.go | sed 's/func \(Fuzz[A-Za-z0-9]*\).*/\1/'); do \
			ft=$(FUZZTIME); case $$f in FuzzOpenQcow2|FuzzSnapshotTable) ft=$(QCOW2_FUZZTIME);; esac; \
			echo "== $$t $$f ($$ft)"; \
			$(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $$ft -fuzzminimizetime 5s $$t || exit 1; \
		done; \
	done
	@echo "== the corruption corpus, long version"
	SNAPVMM_CORPUS_FULL=1 $(GO) test -count=1 -timeout 60m -run '^TestCorruptionCorpus$$' ./cmd/snapvmm
	@echo "== kill -9 of snapvmm during 50 snapshot-save and snapshot-delete jobs"
ifeq ($(KVM_OK),yes)
	SNAPVMM_CRASH_ROUNDS=50 $(GO) test -count=1 -v -run '^TestKill9DuringSave$$' ./cmd/snapvmm
else
	SNAPVMM_CRASH_ROUNDS=50 $(GO) run ./tests/nested -pkgs cmd/snapvmm -run '^TestKill9DuringSave$$'
endif

vet:
	$(GO) vet ./...

fmt:
	gofmt -w $$(git ls-files '*.go')

clean:
	rm -rf $(BUILD)
