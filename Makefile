# ragkv — thin wrapper over CMake. `make run` and `make test` are the two commands in README.
#   make test RAGKV_SANITIZE=address,undefined   sanitizer build in build-san/
#   make test CMAKE_FLAGS=-DRAGKV_CUDA=OFF        CPU-only
JOBS ?= $(shell nproc 2>/dev/null || echo 2)
ifdef RAGKV_SANITIZE
BUILD ?= build-san
CMAKE_FLAGS += -DRAGKV_SANITIZE=$(RAGKV_SANITIZE)
else
BUILD ?= build
endif

.PHONY: all deps build test run fuzz crashtest crash-test soak gpu-check clean help

all: build

help:
	@echo "make run       install deps, build, start ragkvd (data in ./var)"
	@echo "make test      install deps, build, run every test with a private Redis"
	@echo "make build     configure and build into $(BUILD)/"
	@echo "make fuzz      build the libFuzzer targets with clang and run each briefly"
	@echo "make crashtest SIGKILL ragkvd 50 times during writes, and at every crash point; check nothing acknowledged is lost"
	@echo "make soak      minutes of mixed load with a Redis kill and a ragkvd restart; RSS, fds, consistency"
	@echo "make clean     remove build directories"

deps:
	@scripts/install-deps.sh

build: deps
	cmake -S . -B $(BUILD) $(CMAKE_FLAGS)
	cmake --build $(BUILD) -j $(JOBS)

# make test also fuzzes every target briefly (RAGKV_FUZZ_SECONDS each, default 10; 0 skips) in
# the plain build; the sanitizer build's pass leaves it out (the fuzz build has ASan+UBSan)
RAGKV_FUZZ_SECONDS ?= 10
test: build
	scripts/test.sh $(BUILD)
ifndef RAGKV_SANITIZE
	@if [ "$(RAGKV_FUZZ_SECONDS)" != 0 ]; then scripts/fuzz.sh $(RAGKV_FUZZ_SECONDS); fi
endif

run: build
	scripts/run.sh $(BUILD)

fuzz: deps
	scripts/fuzz.sh

# the crash-consistency tests at full length: 50 SIGKILLs of ragkvd during writes (10 in
# make test), then the crash points between blob write, metadata commit and acknowledgement
crashtest: build
	CRITERION_VERBOSITY_LEVEL=1 RAGKV_CRASH_ROUNDS=$${RAGKV_CRASH_ROUNDS:-50} scripts/test.sh $(BUILD) \
	  -R 'service_test_crash|chunkcache_test_crash' -V > $(BUILD)/crashtest.log 2>&1; rc=$$?; \
	  grep -E '^[0-9]+: \[(----|PASS|FAIL|SKIP|====)\]|tests passed|Test time' $(BUILD)/crashtest.log; \
	  [ $$rc = 0 ] || echo "crashtest failed: see $(BUILD)/crashtest.log"; exit $$rc
crash-test: crashtest

# the long soak: 1e6 mixed requests with a Redis kill and a ragkvd restart (plain build, then
# ASan+UBSan); make test runs a 20000-request version
soak: deps
	scripts/soak.sh

gpu-check:
	scripts/gpu-check.sh

clean:
	rm -rf build build-san build-fuzz build-gpu
