# The only entry point: deps, build, test, demo, bench.
SHELL := /bin/bash
ROOT := $(CURDIR)
BUILD := $(ROOT)/build
NGX_SRC := /usr/share/nginx/src
NGX_TREE := $(BUILD)/nginx
PYTHON := /usr/bin/python3
MODULE := $(BUILD)/ngx_http_sse_module.so

# `make NGINX_SRC=/path/to/nginx-x.y.z`: the module for another nginx (a
# release tree or a git checkout) in build/nginx-x.y.z/, configured
# --with-compat plus NGINX_CONF_FLAGS; a tree with Debian's conf_flags uses
# those. Without NGINX_SRC: Debian's nginx-dev tree.
ifdef NGINX_SRC
NGX_SRC := $(abspath $(NGINX_SRC))
$(if $(wildcard $(NGX_SRC)/src/core/nginx.h),,$(error NGINX_SRC=$(NGINX_SRC) \
    is not an nginx source tree (no src/core/nginx.h); unpack a tarball first))
NGX_TREE := $(BUILD)/$(notdir $(NGX_SRC))/nginx
MODULE := $(BUILD)/$(notdir $(NGX_SRC))/ngx_http_sse_module.so
endif
VERSION := $(shell sed -n 's/^\#define NGX_HTTP_SSE_VERSION "\(.*\)"/\1/p' \
    ngx_http_sse_module/ngx_http_sse_version.hpp)

DEB_PACKAGES := nginx-light nginx-dev libnginx-mod-nchan g++ make \
    libgtest-dev python3-pytest python3-aiohttp python3-httpx curl openssl \
    chromium nodejs python3-matplotlib clang libfuzzer-14-dev \
    libclang-rt-14-dev
DEB_PACKAGES += libssl-dev nlohmann-json3-dev python3-jwt python3-cryptography
DEB_PACKAGES += libhiredis-dev redis-server redis-tools liburing-dev

ENGINE_SRCS := $(wildcard src/*.cpp)
ENGINE_HDRS := $(wildcard src/*.hpp)
GLUE_SRCS := $(wildcard ngx_http_sse_module/*.cpp ngx_http_sse_module/*.hpp)
UNIT_SRCS := $(wildcard tests/*.cpp)

.PHONY: all deps test-deps build unit integration test demo bench clean format

all: build

# Installs only what is missing, so it is cheap to run before anything.
deps:
	@missing=""; for p in $(DEB_PACKAGES); do \
	    dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" \
	        || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	    echo "installing:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	        apt-get install -y -qq $$missing; \
	fi

# The tests' JavaScript: real clients for t/ and the client package's own
# test deps (vitest, jsdom, react). `make demo` needs none of them.
test-deps: deps
	@command -v npm >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm
	@# Real clients for t/; the browser is Debian's chromium, never a download.
	@[ -d t/js/node_modules/playwright-core ] || \
	    (cd t/js && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund)
	@[ clients/js/node_modules/.package-lock.json -nt clients/js/package-lock.json ] || \
	    (cd clients/js && npm ci --no-audit --no-fund)

build: deps $(MODULE)

$(NGX_TREE)/objs/Makefile: config config.make | deps
	rm -rf $(NGX_TREE) && mkdir -p $(dir $(NGX_TREE))
	cp -a $(NGX_SRC) $(NGX_TREE)
	cd $(NGX_TREE) && NGX_CONF_FLAGS=(--with-compat $(NGINX_CONF_FLAGS)) && \
	    { [ ! -f conf_flags ] || . ./conf_flags; } && \
	    $$([ -x configure ] && echo ./configure || echo auto/configure) \
	    "$${NGX_CONF_FLAGS[@]}" --add-dynamic-module=$(ROOT) \
	    > $(BUILD)/configure.log 2>&1 || (tail -20 $(BUILD)/configure.log; exit 1)

$(MODULE): $(NGX_TREE)/objs/Makefile $(ENGINE_SRCS) $(ENGINE_HDRS) $(GLUE_SRCS)
	$(MAKE) -C $(NGX_TREE) -f objs/Makefile modules
	@# A new inode: a running nginx keeps its mapping of the old file.
	cp $(NGX_TREE)/objs/ngx_http_sse_module.so $@.tmp && mv -f $@.tmp $@

# The engine's tests build with no nginx include path: a stray nginx
# include in src/ fails here.
UNIT_CXX := g++ -std=c++17 -O1 -g -Wall -Wextra -Werror \
    -fsanitize=address,undefined -Isrc
UNIT_OBJS := $(patsubst %.cpp,$(BUILD)/unit/%.o,$(ENGINE_SRCS) $(UNIT_SRCS))

# One object per file: both cores compile, and a change rebuilds its file.
$(BUILD)/unit/%.o: %.cpp $(ENGINE_HDRS) $(wildcard tests/*.hpp) | deps
	@mkdir -p $(dir $@)
	$(UNIT_CXX) -c $< -o $@

$(BUILD)/unit_tests: $(UNIT_OBJS)
	$(UNIT_CXX) $^ -lgtest -lgtest_main -lcrypto -pthread -o $@

unit: | deps
	$(MAKE) -j2 $(BUILD)/unit_tests
	$(BUILD)/unit_tests --gtest_brief=1

integration: build test-deps
	$(PYTHON) -m pytest -q -p no:cacheprovider t/

test: build unit integration fuzz

demo: build
	@bash examples/demo.sh

# Side by side with nchan; BENCH_ARGS="--scale small" for a quick run.
bench: build
	$(MAKE) -C bench
	$(PYTHON) bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(BUILD) $(ASAN_BUILD)

format:
	clang-format -i src/*.cpp src/*.hpp tests/*.cpp ngx_http_sse_module/*.cpp ngx_http_sse_module/*.hpp \
	    fuzz/*.cpp fuzz/*.hpp bench/sseload/*.cpp bench/sseload/*.hpp bench/floor.cpp

# ---------------------------------------------------------------- checks
# `make fuzz`: libFuzzer targets (fuzz/*.cpp, Debian's clang) built with
# ASan + UBSan, each run FUZZ_SECONDS from its seed corpus (fuzz/corpus/NAME,
# committed) plus what it finds (build/fuzz/corpus/NAME, not committed).
# Any crash, sanitizer report or failed check fails. Longer runs by hand:
# `make fuzz FUZZ_SECONDS=600 FUZZ_TARGETS=fuzz_store`, or run
# build/fuzz/NAME build/fuzz/corpus/NAME fuzz/corpus/NAME (libFuzzer flags).
FUZZ_SECONDS ?= 10
FUZZ_TARGETS := $(patsubst fuzz/%.cpp,%,$(wildcard fuzz/fuzz_*.cpp))
FUZZ_BINS := $(addprefix $(BUILD)/fuzz/,$(FUZZ_TARGETS))
FUZZ_CXX := clang++ -std=c++17 -O1 -g -fno-omit-frame-pointer \
    -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
    -Wall -Wextra -Werror -Isrc -Ifuzz

FUZZ_ENGINE_OBJS := $(patsubst src/%.cpp,$(BUILD)/fuzz/obj/%.o,$(ENGINE_SRCS))
.SECONDARY: $(FUZZ_ENGINE_OBJS)

$(BUILD)/fuzz/obj/%.o: src/%.cpp $(ENGINE_HDRS) | deps
	@mkdir -p $(BUILD)/fuzz/obj
	$(FUZZ_CXX) -c $< -o $@

$(BUILD)/fuzz/%: fuzz/%.cpp $(wildcard fuzz/*.hpp) $(ENGINE_HDRS) $(FUZZ_ENGINE_OBJS)
	$(FUZZ_CXX) $< $(FUZZ_ENGINE_OBJS) -lcrypto -o $@

fuzz: $(FUZZ_BINS)
	@failed=""; for t in $(FUZZ_TARGETS); do \
	    mkdir -p $(BUILD)/fuzz/corpus/$$t $(BUILD)/fuzz/artifacts; \
	    if $(BUILD)/fuzz/$$t -max_total_time=$(FUZZ_SECONDS) -timeout=10 \
	        -artifact_prefix=$(BUILD)/fuzz/artifacts/$$t- \
	        $(BUILD)/fuzz/corpus/$$t fuzz/corpus/$$t \
	        > $(BUILD)/fuzz/$$t.log 2>&1; then \
	        echo "fuzz: $$t: $$(grep -o 'Done [0-9]* runs in [0-9]* second' $(BUILD)/fuzz/$$t.log)s, ok"; \
	    else \
	        grep -B2 -A30 -m1 -E 'check failed|ERROR:|runtime error' $(BUILD)/fuzz/$$t.log; \
	        echo "fuzz: $$t FAILED (log: $(BUILD)/fuzz/$$t.log; input: $(BUILD)/fuzz/artifacts/$$t-*)"; \
	        failed="$$failed $$t"; \
	    fi; \
	done; [ -z "$$failed" ] || { echo "fuzz: failed:$$failed"; exit 1; }

# `make test-asan`: the module built with AddressSanitizer and UBSan
# (build-asan/) loaded into Debian's /usr/sbin/nginx with the sanitizer
# runtime preloaded, running all of t/. Every harness that starts nginx
# (pylib/sselib/nginx.py for t/ and bench/run.py, t/demohelp.py,
# clients/js/test/setup/nginx.js) honours SSE_MODULE (the .so to load) and SSE_PRELOAD
# (LD_PRELOAD for nginx only), and adds log_path=DIR/sanitizer to the
# sanitizer options: a report there, in error.log or in what the nginx
# command printed fails the test (gcc's UBSan ignores log_path and writes
# to stderr, which is error.log once nginx runs).
ASAN_BUILD := $(ROOT)/build-asan
ASAN_TREE := $(ASAN_BUILD)/nginx
ASAN_MODULE := $(ASAN_BUILD)/ngx_http_sse_module.so
SANITIZE := -fsanitize=address,undefined -fno-omit-frame-pointer
# nginx frees its pools at exit in ways LeakSanitizer flags: no leak check.
# A small quarantine keeps the RSS bounds of t/test_limits.py meaningful.
ASAN_OPTIONS_TEST := detect_leaks=0:quarantine_size_mb=16:abort_on_error=0
UBSAN_OPTIONS_TEST := print_stacktrace=1:halt_on_error=0
# Part of the suite by hand: make test-asan ASAN_TESTS=t/test_publish.py
ASAN_TESTS ?= t/

# configure runs exactly as for build/ (its probes must not see the
# sanitizers, or the structs could differ from Debian's nginx); only the
# module's objects and link get them: target-specific variables reach
# every prerequisite of the .so.
$(ASAN_TREE)/objs/Makefile: config config.make | deps
	rm -rf $(ASAN_TREE) && mkdir -p $(ASAN_BUILD)
	cp -a $(NGX_SRC) $(ASAN_TREE)
	cd $(ASAN_TREE) && . ./conf_flags && \
	    ./configure "$${NGX_CONF_FLAGS[@]}" --add-dynamic-module=$(ROOT) \
	    > $(ASAN_BUILD)/configure.log 2>&1 || (tail -20 $(ASAN_BUILD)/configure.log; exit 1)
	printf '\nobjs/ngx_http_sse_module.so: CFLAGS += %s\nobjs/ngx_http_sse_module.so: LINK += %s\n' \
	    '$(SANITIZE)' '$(SANITIZE)' >> $@

$(ASAN_MODULE): $(ASAN_TREE)/objs/Makefile $(ENGINE_SRCS) $(ENGINE_HDRS) $(GLUE_SRCS)
	$(MAKE) -C $(ASAN_TREE) -f objs/Makefile modules
	cp $(ASAN_TREE)/objs/ngx_http_sse_module.so $@.tmp && mv -f $@.tmp $@

build-asan: deps $(ASAN_MODULE)

test-asan: build-asan test-deps
	SSE_MODULE=$(ASAN_MODULE) SSE_PRELOAD=$$(gcc -print-file-name=libasan.so) \
	ASAN_OPTIONS=$(ASAN_OPTIONS_TEST) UBSAN_OPTIONS=$(UBSAN_OPTIONS_TEST) \
	    $(PYTHON) -m pytest -q -p no:cacheprovider $(ASAN_TESTS)

.PHONY: fuzz build-asan test-asan


# ---- release: version matrix, install, Debian package (see docs/install.md)
.PHONY: matrix install uninstall deb

# nginx itself and the module built from each archive in MATRIX_SRC, and
# the smoke subset of t/ run against each; prints a version table.
MATRIX_SRC ?= $(firstword $(wildcard $(ROOT)/../shared/nginx-src \
    $(ROOT)/../../shared/nginx-src /work/shared/nginx-src))
matrix: deps
	@[ -n "$(MATRIX_SRC)" ] || { echo "MATRIX_SRC: no ../shared/nginx-src"; exit 1; }
	bash pkg/matrix.sh $(MATRIX_SRC)

# make install: where Debian's nginx looks, as a libnginx-mod-* package
# lays it out; DESTDIR, PREFIX (/usr) and SYSCONFDIR (/etc) respected.
PREFIX ?= /usr
SYSCONFDIR ?= /etc
MODDIR := $(PREFIX)/lib/nginx/modules
AVAILDIR := $(PREFIX)/share/nginx/modules-available
ENABLED := $(SYSCONFDIR)/nginx/modules-enabled/50-mod-http-sse.conf
install: build
	install -D -m 644 $(MODULE) $(DESTDIR)$(MODDIR)/ngx_http_sse_module.so
	mkdir -p $(DESTDIR)$(AVAILDIR) $(dir $(DESTDIR)$(ENABLED))
	echo "load_module $(MODDIR)/ngx_http_sse_module.so;" \
	    > $(DESTDIR)$(AVAILDIR)/mod-http-sse.conf
	ln -sfn $(AVAILDIR)/mod-http-sse.conf $(DESTDIR)$(ENABLED)
	@echo "installed; check with nginx -t, then reload nginx"

uninstall:
	rm -f $(DESTDIR)$(ENABLED) $(DESTDIR)$(AVAILDIR)/mod-http-sse.conf \
	    $(DESTDIR)$(MODDIR)/ngx_http_sse_module.so

# make deb: build/libnginx-mod-http-sse_VERSION_ARCH.deb, for Debian's nginx.
deb: build
	@[ -z "$(NGINX_SRC)" ] || { echo "make deb packages the module for \
	Debian's nginx: run it without NGINX_SRC"; exit 1; }
	bash pkg/deb.sh $(MODULE) $(VERSION) $(BUILD)
