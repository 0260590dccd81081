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
    chromium nodejs python3-matplotlib

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
$(BUILD)/unit_tests: $(ENGINE_SRCS) $(ENGINE_HDRS) $(UNIT_SRCS) | deps
	@mkdir -p $(BUILD)
	g++ -std=c++17 -O1 -g -Wall -Wextra -Werror -fsanitize=address,undefined \
	    -Isrc $(ENGINE_SRCS) $(UNIT_SRCS) -lgtest -lgtest_main -pthread -o $@

unit: $(BUILD)/unit_tests
	$(BUILD)/unit_tests --gtest_brief=1

integration: build test-deps
	$(PYTHON) -m pytest -q -p no:cacheprovider t/

test: build unit integration

demo: build
	@bash examples/demo.sh

# Side by side with nchan; BENCH_ARGS="--scale small" for a quick run.
bench: build
	$(MAKE) -C bench
	$(PYTHON) bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(BUILD)

format:
	clang-format -i src/*.cpp src/*.hpp tests/*.cpp ngx_http_sse_module/*.cpp ngx_http_sse_module/*.hpp

# ---- release: version matrix, install, Debian package (see docs/install.md)
.PHONY: matrix install uninstall deb

# nginx itself and the module built from each archive in MATRIX_SRC, and
# the smoke subset of t/ run against each; prints a version table.
MATRIX_SRC ?= $(firstword $(wildcard $(ROOT)/../shared/nginx-src \
    $(ROOT)/../../shared/nginx-src))
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
