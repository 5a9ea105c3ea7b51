# bgserve - build, run and test.
#
#   make            build build/bgserve, build/plugins/*.so, build/sample_app.so
#                   and the testing library (build/lib/libbgserve-testing.*)
#   make run        install missing system packages (as root), build, serve sample_app
#   make test       the same package step, then build and run every test
#   make test SANITIZE=address,undefined   (or SANITIZE=thread)
#
# Outputs always live under build/ (a sanitizer build under build/san-NAME/,
# so switching flags never mixes objects).

CC       ?= cc
SANITIZE ?=
PORT     ?= 8000
comma    := ,

ifeq ($(SANITIZE),)
BUILD    := build
SANFLAGS :=
else
BUILD    := build/san-$(subst $(comma),-,$(SANITIZE))
SANFLAGS := -fsanitize=$(SANITIZE) -fno-omit-frame-pointer -fno-sanitize-recover=all
endif

# Debian package names, and the pkg-config module each one provides.
# TEST_CMDS: programs the tests run (the broker's tests start redis-server;
# the dashboard's browser tests, tests/browser/, drive chromium).
RUN_DEBS  := libmicrohttpd-dev libsqlite3-dev libdw-dev libhiredis-dev pkg-config
TEST_DEBS := libmicrohttpd-dev libsqlite3-dev libdw-dev libhiredis-dev pkg-config libcmocka-dev \
             libcurl4-openssl-dev redis-server chromium chromium-driver python3-selenium \
             fonts-dejavu-core
RUN_PCS   := libmicrohttpd sqlite3 libdw hiredis
TEST_PCS  := libmicrohttpd sqlite3 libdw hiredis cmocka libcurl
TEST_CMDS := redis-server chromium chromedriver

WARN     := -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes -Wmissing-prototypes
BASE     := -std=c11 -D_GNU_SOURCE -g -O2 $(WARN)
CFLAGS_SRV = $(BASE) $(SANFLAGS) -Iinclude -iquote cmd/bgserve -pthread \
             $(shell pkg-config --cflags libmicrohttpd sqlite3 libdw hiredis 2>/dev/null) -MMD -MP
LDLIBS_SRV = $(shell pkg-config --libs libmicrohttpd sqlite3 libdw hiredis 2>/dev/null) -ldl -lm -pthread
PLUGIN_CFLAGS := -std=c11 -D_GNU_SOURCE -g -O2 $(WARN) -Iinclude -fPIC -fvisibility=hidden
PLUGIN_LDFLAGS := -shared -Wl,-z,defs

SRV_SRCS  := $(wildcard cmd/bgserve/*.c)
SRV_OBJS  := $(SRV_SRCS:%.c=$(BUILD)/obj/%.o)
LIB_OBJS  := $(filter-out $(BUILD)/obj/cmd/bgserve/main.o,$(SRV_OBJS))

PLUGINS   := $(patsubst plugins/%.c,$(BUILD)/plugins/%.so,$(wildcard plugins/*.c))
FIXTURES  := $(patsubst tests/fixtures/%.c,$(BUILD)/tests/fixtures/%.so,$(wildcard tests/fixtures/*.c))
SAMPLE    := $(BUILD)/sample_app.so
SAMPLE_SRCS := $(wildcard sample_app/*.c)

TEST_SRCS    := $(wildcard tests/test_*.c)
# Tests written with the testing library (bgserve/testing.h) link it.
LIBTEST_SRCS := $(wildcard tests/test_testing*.c)
TEST_BINS    := $(patsubst tests/%.c,$(BUILD)/tests/%,$(TEST_SRCS))
TEST_SUPPORT := $(patsubst %.c,$(BUILD)/obj/%.o,$(wildcard tests/support/*.c))
CFLAGS_TEST_EXTRA = -iquote tests/support -Itesting $(shell pkg-config --cflags cmocka libcurl 2>/dev/null)
LDLIBS_TEST   = $(LDLIBS_SRV) $(shell pkg-config --libs cmocka libcurl 2>/dev/null)

.PHONY: all run dev sample_app test check-tests deps-run deps-test clean help
# Keep test objects (make would delete them as intermediates).
.SECONDARY:
.DEFAULT_GOAL := all

all: $(BUILD)/bgserve $(PLUGINS) $(SAMPLE) testlib

help:
	@sed -n '3,9p' Makefile | sed 's/^# \{0,1\}//'

# No -rdynamic: the server exports none of its functions, so a plugin that
# defines one of the same name calls its own (tests/fixtures/symbol_clash.c).
# Crash backtraces print bgserve's frames as offsets for addr2line.
$(BUILD)/bgserve: $(SRV_OBJS)
	@mkdir -p $(@D)
	$(CC) $(SANFLAGS) -o $@ $^ $(LDLIBS_SRV)

$(BUILD)/obj/%.o: %.c
	@mkdir -p $(@D)
	$(CC) $(CFLAGS_SRV) $(EXTRA_CFLAGS) -c -o $@ $<

$(BUILD)/obj/tests/%.o: EXTRA_CFLAGS = $(CFLAGS_TEST_EXTRA)

# The dashboard's page is compiled into the binary (.incbin in dashboard.c).
DASHBOARD_ASSETS := $(wildcard cmd/bgserve/dashboard/*)
$(BUILD)/obj/cmd/bgserve/dashboard.o build/fuzz/obj/cmd/bgserve/dashboard.o: $(DASHBOARD_ASSETS)

$(BUILD)/plugins/%.so: plugins/%.c include/bgserve.h
	@mkdir -p $(@D)
	$(CC) $(PLUGIN_CFLAGS) $(PLUGIN_LDFLAGS) -o $@ $<

# Built with the server's sanitizer (make dev SANITIZE=address): an
# instrumented plugin needs an instrumented server, and the reverse helps.
$(SAMPLE): $(SAMPLE_SRCS) include/bgserve.h
	@mkdir -p $(@D)
	$(CC) $(PLUGIN_CFLAGS) $(SANFLAGS) $(PLUGIN_LDFLAGS) -o $@ $(SAMPLE_SRCS)

$(BUILD)/tests/fixtures/%.so: tests/fixtures/%.c include/bgserve.h
	@mkdir -p $(@D)
	$(CC) $(PLUGIN_CFLAGS) $(PLUGIN_LDFLAGS) -o $@ $<

# Built as a careless third party would: without -fvisibility=hidden.
$(BUILD)/tests/fixtures/symbol_clash.so: tests/fixtures/symbol_clash.c include/bgserve.h
	@mkdir -p $(@D)
	$(CC) $(filter-out -fvisibility=hidden,$(PLUGIN_CFLAGS)) $(PLUGIN_LDFLAGS) -o $@ $<

# The reload fixtures' builds A and B share their body.
$(BUILD)/tests/fixtures/reload_a.so $(BUILD)/tests/fixtures/reload_b.so: tests/fixtures/reload_common.h
# The hand-made descriptors share theirs; the refused ones a no-op handler.
$(patsubst %,$(BUILD)/tests/fixtures/%.so,bad_magic major2 minor_newer small_struct): \
  tests/fixtures/handmade.h tests/fixtures/noop.h
$(patsubst %,$(BUILD)/tests/fixtures/%.so,bad_method bad_param bad_path dup_route dup_task \
  null_handler reserved_route unknown_route_task): tests/fixtures/noop.h
# The queue fixtures share their task log and /adhoc route.
$(patsubst %,$(BUILD)/tests/fixtures/%.so,broker_app journal_app scale_app): tests/fixtures/task_log.h
# scale_app's second build (its runs say B), for `bgserve worker --reload`.
FIXTURES += $(BUILD)/tests/fixtures/scale_app_b.so
$(BUILD)/tests/fixtures/scale_app_b.so: tests/fixtures/scale_app.c tests/fixtures/task_log.h include/bgserve.h
	@mkdir -p $(@D)
	$(CC) $(PLUGIN_CFLAGS) -DSCALE_BUILD="'B'" $(PLUGIN_LDFLAGS) -o $@ $<

# Tests link the server's objects through an archive, so each test pulls
# in only the rooms it uses.
$(BUILD)/libbgserve.a: $(LIB_OBJS)
	@mkdir -p $(@D)
	rm -f $@ && $(AR) rcs $@ $^

$(BUILD)/tests/test_%: $(BUILD)/obj/tests/test_%.o $(TEST_SUPPORT) $(BUILD)/libbgserve.a
	@mkdir -p $(@D)
	$(CC) $(SANFLAGS) -rdynamic -o $@ $^ $(LDLIBS_TEST)

# ---- the testing library ------------------------------------------------
# bgserve/testing.h (in testing/, installed as $(INCLUDEDIR)/bgserve/testing.h)
# and libbgserve-testing.{a,so}: the server's rooms and testing/testing.c,
# built position independent with hidden visibility, linked into one
# object whose only global symbols are the bgst_ functions (objcopy
# --localize-hidden), so neither library clashes with a test's own names.
# Versioned apart from the plugin ABI (BGST_VERSION in the header; the
# soname carries its major).  build/pkgconfig/ holds
# bgserve-testing-uninstalled.pc, which pkg-config prefers when
# PKG_CONFIG_PATH names that directory: the same flags, in the tree.

.PHONY: testlib
TESTLIB_VERSION := $(shell sed -n 's/^\#define BGST_VERSION "\(.*\)"/\1/p' testing/bgserve/testing.h)
TESTLIB_MAJOR   := $(firstword $(subst ., ,$(TESTLIB_VERSION)))
TESTLIB_OBJS    := $(patsubst %.c,$(BUILD)/pic/%.o,$(filter-out cmd/bgserve/main.c,$(SRV_SRCS)) testing/testing.c)
TESTLIB_A       := $(BUILD)/lib/libbgserve-testing.a
TESTLIB_SO      := $(BUILD)/lib/libbgserve-testing.so.$(TESTLIB_VERSION)
TESTLIB_PC      := $(BUILD)/pkgconfig/bgserve-testing-uninstalled.pc
TESTLIB_LIBS    := $(RUN_PCS)

testlib: $(TESTLIB_A) $(TESTLIB_SO) $(TESTLIB_PC) $(BUILD)/pkgconfig/bgserve-uninstalled.pc

# The plugin flags in the tree too, for a project built against this
# checkout (PKG_CONFIG_PATH=.../build/pkgconfig; test_scaffold does).
$(BUILD)/pkgconfig/bgserve-uninstalled.pc: bgserve.pc.in include/bgserve.h cmd/bgserve/version.h
	@mkdir -p $(@D)
	sed -e 's|@PREFIX@|$(CURDIR)|g' -e 's|@VERSION@|$(VERSION)|g' -e 's|@ABI@|$(ABI_VERSION)|g' \
	  bgserve.pc.in > $@

$(BUILD)/pic/%.o: %.c
	@mkdir -p $(@D)
	$(CC) $(CFLAGS_SRV) -fPIC -fvisibility=hidden -Itesting -c -o $@ $<

$(BUILD)/pic/cmd/bgserve/dashboard.o: $(DASHBOARD_ASSETS)

$(BUILD)/pic/bgserve-testing.o: $(TESTLIB_OBJS)
	$(CC) $(SANFLAGS) -nostdlib -r -o $@.all $^
	objcopy --localize-hidden $@.all $@
	rm -f $@.all

$(TESTLIB_A): $(BUILD)/pic/bgserve-testing.o
	@mkdir -p $(@D)
	rm -f $@ && $(AR) rcs $@ $^

$(TESTLIB_SO): $(BUILD)/pic/bgserve-testing.o
	@mkdir -p $(@D)
	$(CC) $(SANFLAGS) -shared -Wl,-soname,libbgserve-testing.so.$(TESTLIB_MAJOR) -Wl,-z,defs \
	  -o $@ $^ $(LDLIBS_SRV)
	ln -sf $(notdir $@) $(@D)/libbgserve-testing.so.$(TESTLIB_MAJOR)
	ln -sf $(notdir $@) $(@D)/libbgserve-testing.so

$(TESTLIB_PC): bgserve-testing.pc.in testing/bgserve/testing.h
	@mkdir -p $(@D)
	sed -e 's|@VERSION@|$(TESTLIB_VERSION)|g' -e 's|@REQUIRES@|$(TESTLIB_LIBS)|g' \
	  -e 's|^includedir=.*|includedir=$(CURDIR)/testing|' \
	  -e 's|^libdir=.*|libdir=$(CURDIR)/$(BUILD)/lib|' \
	  -e 's|^Cflags:.*|Cflags: -I$${includedir} -I$(CURDIR)/include|' \
	  -e 's|^prefix=.*|prefix=$(CURDIR)|' bgserve-testing.pc.in > $@

# Tests of the library link its archive (the server's rooms inside are
# local to it, so libbgserve.a, for the helpers, does not clash).
$(patsubst tests/%.c,$(BUILD)/tests/%,$(LIBTEST_SRCS)): $(BUILD)/tests/%: $(BUILD)/obj/tests/%.o \
    $(TEST_SUPPORT) $(TESTLIB_A) $(BUILD)/libbgserve.a
	@mkdir -p $(@D)
	$(CC) $(SANFLAGS) -o $@ $^ $(LDLIBS_TEST)

# ---- system packages ---------------------------------------------------

# Checks the pkg-config modules (and the programs in $(3)); installs the
# missing Debian packages when run as root, otherwise prints the exact
# command and stops.
define ensure_debs
	@if ! command -v pkg-config >/dev/null 2>&1 || ! pkg-config --exists $(2) || \
	    ! ( for c in $(3); do command -v $$c >/dev/null 2>&1 || exit 1; done ); then \
	  missing=""; \
	  for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	  if [ -z "$$missing" ]; then missing="$(1)"; fi; \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "bgserve: installing system packages:$$missing"; \
	    DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing >/dev/null || \
	      { echo "bgserve: apt-get install$$missing failed" >&2; exit 1; }; \
	  else \
	    echo "bgserve: missing system packages:$$missing" >&2; \
	    echo "Install them with:  sudo apt-get install$$missing" >&2; exit 1; \
	  fi; \
	fi
endef

deps-run:
	$(call ensure_debs,$(RUN_DEBS),$(RUN_PCS))

deps-test:
	$(call ensure_debs,$(TEST_DEBS),$(TEST_PCS),$(TEST_CMDS))

# The iterate loop: rebuild and reload the sample app on every save.
sample_app: $(SAMPLE)

dev: deps-run
	@$(MAKE) --no-print-directory all
	./$(BUILD)/bgserve --port $(PORT) --reload --watch sample_app \
	  --build "make --no-print-directory SANITIZE=$(SANITIZE) sample_app" $(SAMPLE)

run: deps-run
	@$(MAKE) --no-print-directory all
	./$(BUILD)/bgserve --port $(PORT) $(SAMPLE)

# ---- tests ---------------------------------------------------------------

test: deps-test
	@$(MAKE) --no-print-directory all check-tests

# A dependency cycle among the server's rooms, or a breached wall, fails
# the build before any test runs (scripts/check-includes.sh says where).
check-tests: $(TEST_BINS) $(FIXTURES) $(PLUGINS) $(SAMPLE) $(BUILD)/bgserve
	@sh scripts/check-includes.sh cmd/bgserve $(BUILD)/obj/cmd/bgserve
	@BGSERVE_BUILD=$(BUILD) sh tests/run.sh $(TEST_BINS)

# ---- benchmarks (never part of make test) ---------------------------------
#   make bench         wrk against a bare libmicrohttpd server, bgserve and
#                      (when Debian has them) Starlette; writes
#                      bench/results/latest.md.  See bench/README.md.
#   make bench-quick   one short round, for iterating on the server
#   make bench-devloop save → served for the scaffold's project, alone
#                      (20 saves; no wrk)
#   make bench-broker  tasks/s through a private redis-server with 1 and 2
#                      bgserve worker processes, alone (no wrk)

.PHONY: bench bench-quick bench-devloop bench-broker bench-build deps-bench
BENCH_BINS := $(BUILD)/bench/mhd_baseline $(BUILD)/bench/wakecost $(BUILD)/bench/journal_writer \
              $(patsubst bench/plugins/%.c,$(BUILD)/bench/%.so,$(wildcard bench/plugins/*.c))

$(BUILD)/bench/mhd_baseline: bench/mhd_baseline.c
	@mkdir -p $(@D)
	$(CC) $(BASE) -pthread $(shell pkg-config --cflags libmicrohttpd 2>/dev/null) -o $@ $< \
	  $(shell pkg-config --libs libmicrohttpd 2>/dev/null) -pthread

$(BUILD)/bench/wakecost: bench/wakecost.c
	@mkdir -p $(@D)
	$(CC) $(BASE) -pthread -o $@ $<

# The journal's writer alone, rows and instructions per task (bench/README.md).
$(BUILD)/bench/journal_writer: bench/journal_writer.c $(LIB_OBJS)
	@mkdir -p $(@D)
	$(CC) $(CFLAGS_SRV) -o $@ $< $(LIB_OBJS) $(LDLIBS_SRV)

$(BUILD)/bench/%.so: bench/plugins/%.c include/bgserve.h
	@mkdir -p $(@D)
	$(CC) $(PLUGIN_CFLAGS) $(PLUGIN_LDFLAGS) -o $@ $<

# wrk (saturation) and h2load (Debian's nghttp2-client: the fixed-rate
# rows) are required; python3-starlette and python3-uvicorn are optional
# (the Starlette rows are skipped without them), so their install may fail.
deps-bench:
	@missing=""; \
	command -v wrk >/dev/null 2>&1 || missing="$$missing wrk"; \
	command -v h2load >/dev/null 2>&1 || missing="$$missing nghttp2-client"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "bgserve: installing system packages:$$missing"; \
	    DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing >/dev/null || \
	      { echo "bgserve: apt-get install$$missing failed" >&2; exit 1; }; \
	  else \
	    echo "bgserve: missing system packages:$$missing" >&2; \
	    echo "Install them with:  sudo apt-get install$$missing" >&2; exit 1; \
	  fi; \
	fi
	@if ! /usr/bin/python3 -c 'import starlette, uvicorn' >/dev/null 2>&1 && \
	    [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "bgserve: trying to install python3-starlette python3-uvicorn (optional)"; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
	    python3-starlette python3-uvicorn >/dev/null 2>&1 || \
	    echo "bgserve: python3-starlette/python3-uvicorn unavailable: the Starlette rows will be skipped"; \
	fi

bench-build: $(BUILD)/bgserve $(BUILD)/plugins/hello.so $(BENCH_BINS)

bench: deps-run deps-bench
	@$(MAKE) --no-print-directory bench-build
	python3 bench/run --build $(BUILD)

bench-quick: deps-run
	@$(MAKE) --no-print-directory bench-build
	python3 bench/run --build $(BUILD) --quick

bench-devloop: deps-run
	@$(MAKE) --no-print-directory all
	python3 bench/run --build $(BUILD) --only devloop

bench-broker: deps-run
	@$(MAKE) --no-print-directory bench-build
	python3 bench/run --build $(BUILD) --only broker

# ---- install, plugin authors, editors ----------------------------------
#   make install [PREFIX=/usr/local] [DESTDIR=]   bgserve, bgserve.h,
#        bgserve.pc (pkg-config --cflags bgserve), the bgserve(1) page, and
#        the testing library: bgserve/testing.h, libbgserve-testing.{a,so}
#        and bgserve-testing.pc
#   make uninstall [PREFIX=...] [DESTDIR=...]     removes exactly those
#   make compdb    compile_commands.json for clangd / clang-tidy
# INSTALL_BIN picks the binary to install, INSTALL_LIB the directory of the
# testing library's builds (tests pass a sanitizer build's).

PREFIX       ?= /usr/local
DESTDIR      ?=
BINDIR       ?= $(PREFIX)/bin
INCLUDEDIR   ?= $(PREFIX)/include
LIBDIR       ?= $(PREFIX)/lib
PKGCONFIGDIR ?= $(PREFIX)/lib/pkgconfig
MANDIR       ?= $(PREFIX)/share/man
INSTALL_BIN  ?= $(BUILD)/bgserve
INSTALL_LIB  ?= $(BUILD)/lib
COMPDB       ?= compile_commands.json
VERSION      := $(shell sed -n 's/^\#define BGSERVE_VERSION "\(.*\)"/\1/p' cmd/bgserve/version.h)
ABI_VERSION  := $(shell sed -n 's/^\#define BGS_ABI_MAJOR \([0-9]*\)/\1/p' include/bgserve.h).$(shell sed -n 's/^\#define BGS_ABI_MINOR \([0-9]*\)/\1/p' include/bgserve.h)
TESTLIB_SONAMES := libbgserve-testing.so.$(TESTLIB_VERSION) libbgserve-testing.so.$(TESTLIB_MAJOR) \
                   libbgserve-testing.so
INSTALLED    := $(BINDIR)/bgserve $(INCLUDEDIR)/bgserve.h $(PKGCONFIGDIR)/bgserve.pc \
                $(MANDIR)/man1/bgserve.1 $(INCLUDEDIR)/bgserve/testing.h \
                $(LIBDIR)/libbgserve-testing.a $(TESTLIB_SONAMES:%=$(LIBDIR)/%) \
                $(PKGCONFIGDIR)/bgserve-testing.pc

.PHONY: install uninstall compdb

install: $(INSTALL_BIN) include/bgserve.h bgserve.pc.in docs/bgserve.1 testing/bgserve/testing.h \
         bgserve-testing.pc.in $(INSTALL_LIB)/libbgserve-testing.a \
         $(INSTALL_LIB)/libbgserve-testing.so.$(TESTLIB_VERSION)
	install -d '$(DESTDIR)$(BINDIR)' '$(DESTDIR)$(INCLUDEDIR)/bgserve' '$(DESTDIR)$(LIBDIR)' \
	  '$(DESTDIR)$(PKGCONFIGDIR)' '$(DESTDIR)$(MANDIR)/man1'
	install -m 755 $(INSTALL_BIN) '$(DESTDIR)$(BINDIR)/bgserve'
	install -m 644 include/bgserve.h '$(DESTDIR)$(INCLUDEDIR)/bgserve.h'
	sed -e 's|@PREFIX@|$(PREFIX)|g' -e 's|@VERSION@|$(VERSION)|g' \
	  -e 's|@ABI@|$(ABI_VERSION)|g' bgserve.pc.in > '$(DESTDIR)$(PKGCONFIGDIR)/bgserve.pc'
	chmod 644 '$(DESTDIR)$(PKGCONFIGDIR)/bgserve.pc'
	install -m 644 docs/bgserve.1 '$(DESTDIR)$(MANDIR)/man1/bgserve.1'
	install -m 644 testing/bgserve/testing.h '$(DESTDIR)$(INCLUDEDIR)/bgserve/testing.h'
	install -m 644 $(INSTALL_LIB)/libbgserve-testing.a '$(DESTDIR)$(LIBDIR)/libbgserve-testing.a'
	install -m 755 $(INSTALL_LIB)/libbgserve-testing.so.$(TESTLIB_VERSION) '$(DESTDIR)$(LIBDIR)/'
	ln -sf libbgserve-testing.so.$(TESTLIB_VERSION) '$(DESTDIR)$(LIBDIR)/libbgserve-testing.so.$(TESTLIB_MAJOR)'
	ln -sf libbgserve-testing.so.$(TESTLIB_VERSION) '$(DESTDIR)$(LIBDIR)/libbgserve-testing.so'
	sed -e 's|@PREFIX@|$(PREFIX)|g' -e 's|@VERSION@|$(TESTLIB_VERSION)|g' \
	  -e 's|@REQUIRES@|$(TESTLIB_LIBS)|g' -e 's|^libdir=.*|libdir=$(LIBDIR)|' \
	  bgserve-testing.pc.in > '$(DESTDIR)$(PKGCONFIGDIR)/bgserve-testing.pc'
	chmod 644 '$(DESTDIR)$(PKGCONFIGDIR)/bgserve-testing.pc'

uninstall:
	rm -f $(foreach f,$(INSTALLED),'$(DESTDIR)$(f)')
	-rmdir '$(DESTDIR)$(INCLUDEDIR)/bgserve' 2>/dev/null

compdb:
	sh scripts/compdb.sh '$(CURDIR)' '$(CC)' \
	  '$(filter-out -MMD -MP,$(CFLAGS_SRV)) -Itesting' '$(SRV_SRCS) testing/testing.c' \
	  '$(PLUGIN_CFLAGS)' '$(wildcard plugins/*.c) $(SAMPLE_SRCS) $(wildcard tests/fixtures/*.c)' \
	  '$(filter-out -MMD -MP,$(CFLAGS_SRV)) $(CFLAGS_TEST_EXTRA)' '$(TEST_SRCS) $(wildcard tests/support/*.c)' \
	  > '$(COMPDB).tmp' && mv '$(COMPDB).tmp' '$(COMPDB)'

# ---- ABI gate (make abi-check; needs abigail-tools) --------------------------
# abi/bgserve-1.N.abi is the abidw description of the 1.N plugin ABI, made
# from abi/anchor.c (a tiny library using every public struct).  abi-check
# rebuilds that description from today's include/bgserve.h and fails on any
# change but members appended at the end of a struct (abi/check.sh), checks
# that the frozen 1.0 header still matches the baseline, and that every
# plugin the Makefile builds exports only bgserve_plugin_v1.
# make abi-baseline writes abi/bgserve-MAJOR.MINOR.abi for the header's
# version: once, when that minor is cut (ABI 1.1 appended the va_list slots).

.PHONY: abi-check abi-baseline deps-abi
ABI_CC    ?= gcc
ABIDW     := abidw --no-corpus-path --no-comp-dir-path --no-show-locs
OLD_PLUGIN := $(BUILD)/tests/abi/old_plugin.so
# One baseline per released minor (abi/bgserve-1.N.abi): today's header
# must keep every one of them as its prefix.
ABI_BASELINES := $(sort $(wildcard abi/bgserve-*.abi))
# Built to be refused for exporting the wrong symbol: exempt from the check.
# symbol_clash.so is built without hidden visibility on purpose.
ABI_EXPORT_EXEMPT := $(BUILD)/tests/fixtures/no_symbol.so $(BUILD)/tests/fixtures/symbol_clash.so

$(OLD_PLUGIN): tests/abi/old_plugin.c tests/abi/bgserve_1_0.h
	@mkdir -p $(@D)
	$(CC) -std=c11 -D_GNU_SOURCE -g -O2 $(WARN) -fPIC -fvisibility=hidden $(PLUGIN_LDFLAGS) -o $@ $<

# test_abi serves it.
check-tests: $(OLD_PLUGIN)

build/abi/anchor.so: abi/anchor.c include/bgserve.h
	@mkdir -p $(@D)
	$(ABI_CC) -std=c11 -g -O0 -fPIC -shared -fvisibility=hidden -Iinclude -o $@ $<

build/abi/anchor_1_0.so: abi/anchor.c tests/abi/bgserve_1_0.h
	@mkdir -p $(@D)/frozen
	cp tests/abi/bgserve_1_0.h $(@D)/frozen/bgserve.h
	$(ABI_CC) -std=c11 -g -O0 -fPIC -shared -fvisibility=hidden -I$(@D)/frozen -o $@ $<

deps-abi:
	@if ! command -v abidiff >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "bgserve: installing system packages: abigail-tools"; \
	    DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends abigail-tools >/dev/null || \
	      { echo "bgserve: apt-get install abigail-tools failed" >&2; exit 1; }; \
	  else \
	    echo "bgserve: missing system package: abigail-tools" >&2; \
	    echo "Install it with:  sudo apt-get install abigail-tools" >&2; exit 1; \
	  fi; \
	fi

abi-check: deps-abi
	@$(MAKE) --no-print-directory build/abi/anchor.so build/abi/anchor_1_0.so \
	  $(PLUGINS) $(FIXTURES) $(SAMPLE) $(OLD_PLUGIN)
	$(ABIDW) --out-file build/abi/current.abi build/abi/anchor.so
	$(ABIDW) --out-file build/abi/frozen.abi build/abi/anchor_1_0.so
	@for b in $(ABI_BASELINES); do sh abi/check.sh $$b build/abi/current.abi || exit 1; done
	@abidiff abi/bgserve-1.0.abi build/abi/frozen.abi >/dev/null || \
	  { echo "abi-check: tests/abi/bgserve_1_0.h no longer matches abi/bgserve-1.0.abi: it is frozen, restore it" >&2; exit 1; }
	@bad=0; for so in $(filter-out $(ABI_EXPORT_EXEMPT),$(PLUGINS) $(FIXTURES) $(SAMPLE) $(OLD_PLUGIN)); do \
	  extra=$$(nm -D --defined-only --format=posix "$$so" | awk '$$1 != "bgserve_plugin_v1" { print $$1 }'); \
	  if [ -n "$$extra" ]; then echo "abi-check: $$so exports more than bgserve_plugin_v1:" $$extra >&2; bad=1; fi; \
	done; [ $$bad = 0 ] && echo "abi-check: every plugin exports only bgserve_plugin_v1"

abi-baseline: deps-abi build/abi/anchor.so
	$(ABIDW) --out-file abi/bgserve-$(ABI_VERSION).abi build/abi/anchor.so

# ---- fuzzing (make fuzz; needs clang) --------------------------------------
#   make fuzz FUZZ_SECONDS=60   run each tests/fuzz/fuzz_*.c target for that
#                               long; new inputs go to build/fuzz/corpus/,
#                               crashes to tests/fuzz/crashes/TARGET/ (commit
#                               them with the fix: make test replays them).
# The targets are built with clang's libFuzzer, ASan and UBSan into
# build/fuzz/; test_fuzz_replay runs the same entry points without
# libFuzzer over tests/fuzz/corpus/ and tests/fuzz/crashes/.

.PHONY: fuzz fuzz-build deps-fuzz
FUZZ_SECONDS ?= 60
FUZZ_CC      ?= clang
FUZZ_NAMES   := $(patsubst tests/fuzz/fuzz_%.c,%,$(wildcard tests/fuzz/fuzz_*.c))
FUZZ_BINS    := $(FUZZ_NAMES:%=build/fuzz/fuzz_%)
FUZZ_SAN     := -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer
FUZZ_LIBOBJS := $(patsubst %.c,build/fuzz/obj/%.o,$(filter-out cmd/bgserve/main.c,$(SRV_SRCS)))
FUZZ_REPLAY_OBJS := $(patsubst tests/fuzz/%.c,$(BUILD)/obj/tests/fuzz/%.o,$(wildcard tests/fuzz/fuzz_*.c))

build/fuzz/obj/%.o: %.c
	@mkdir -p $(@D)
	$(FUZZ_CC) $(BASE) $(FUZZ_SAN) -fsanitize=fuzzer-no-link -Iinclude -iquote cmd/bgserve -pthread \
	  $(shell pkg-config --cflags libmicrohttpd 2>/dev/null) -MMD -MP -c -o $@ $<

build/fuzz/libbgserve.a: $(FUZZ_LIBOBJS)
	rm -f $@ && $(AR) rcs $@ $^

build/fuzz/fuzz_%: build/fuzz/obj/tests/fuzz/fuzz_%.o build/fuzz/libbgserve.a
	$(FUZZ_CC) $(FUZZ_SAN) -fsanitize=fuzzer -o $@ $^ $(LDLIBS_SRV)

# The replay build renames each target's entry point to fuzz_NAME_one.
$(BUILD)/obj/tests/fuzz/%.o: EXTRA_CFLAGS = -DLLVMFuzzerTestOneInput=$(notdir $*)_one

$(BUILD)/tests/test_fuzz_replay: $(BUILD)/obj/tests/test_fuzz_replay.o $(FUZZ_REPLAY_OBJS) \
                                 $(TEST_SUPPORT) $(BUILD)/libbgserve.a
	@mkdir -p $(@D)
	$(CC) $(SANFLAGS) -rdynamic -o $@ $^ $(LDLIBS_TEST)

# clang and its libFuzzer runtime (Debian: clang, libclang-rt-NN-dev).
deps-fuzz:
	@if ! printf 'int LLVMFuzzerTestOneInput(const char *d, long n);\nint LLVMFuzzerTestOneInput(const char *d, long n) { (void)d; (void)n; return 0; }\n' | \
	    $(FUZZ_CC) -fsanitize=fuzzer -x c -o /dev/null - >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "bgserve: installing clang and its libFuzzer runtime"; \
	    DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends clang >/dev/null && \
	    ver=$$(clang --version | sed -n 's/.*clang version \([0-9]*\).*/\1/p' | head -n 1) && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends libclang-rt-$$ver-dev >/dev/null || \
	      { echo "bgserve: installing clang/libclang-rt failed" >&2; exit 1; }; \
	  else \
	    echo "bgserve: clang with libFuzzer is missing" >&2; \
	    echo "Install it with:  sudo apt-get install clang libclang-rt-14-dev  (the clang version's runtime)" >&2; exit 1; \
	  fi; \
	fi

fuzz-build: $(FUZZ_BINS)

fuzz: deps-run deps-fuzz
	@$(MAKE) --no-print-directory fuzz-build
	@for t in $(FUZZ_NAMES); do \
	  mkdir -p build/fuzz/corpus/$$t tests/fuzz/crashes/$$t; \
	  echo "== fuzz $$t for $(FUZZ_SECONDS) s"; \
	  ./build/fuzz/fuzz_$$t -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 \
	    -artifact_prefix=tests/fuzz/crashes/$$t/ build/fuzz/corpus/$$t tests/fuzz/corpus/$$t \
	    2>build/fuzz/$$t.log || { tail -n 40 build/fuzz/$$t.log; exit 1; }; \
	  grep -E '^stat::(number_of_executed_units|new_units_added)' build/fuzz/$$t.log; \
	done

clean:
	rm -rf build

-include $(shell find $(BUILD)/obj $(BUILD)/pic -name '*.d' 2>/dev/null)
-include $(shell find build/fuzz/obj -name '*.d' 2>/dev/null)
