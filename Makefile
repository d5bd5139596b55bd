# langdaug build. `make demo` and `make test` are the two entry points; both
# first make sure the Debian packages below are installed.
#   make                 build everything into build/
#   make test            build and run the test suite (tests/run)
#   make tsan            the thread-meeting suites (tests/tsan-suites) under ThreadSanitizer,
#                        built into build-tsan; any report from any process fails its suite
#   make bench           benchmarks (speed is measured here, never in tests)
#   make demo            the main job on the embedded default
#   make fuzz            libFuzzer pass over every target (FUZZ_SECONDS each, default 20)
#   make fuzz-long       every target for FUZZ_LONG_SECONDS (default 3600) each, one at a
#                        time, minimizing what it finds into tests/fuzz/corpus (replayed by make fuzz)
#   make soak            the daemon under mixed load for SOAK_SECONDS (default 3600), one CSV
#                        row a minute (build/soak.csv); fails if memory, fds, threads, queue
#                        memory or first-batch latency grow after warm-up (tests/soak.py)
#   make install         PREFIX=/usr/local DESTDIR=
# Options: SANITIZE=address,undefined  WERROR=1  OPT=-O2  V=1

PREFIX ?= /usr/local
DESTDIR ?=
BINDIR = $(PREFIX)/bin
LIBDIR = $(PREFIX)/lib
INCDIR = $(PREFIX)/include
SYSCONFDIR ?= /etc
UNITDIR ?= $(PREFIX)/lib/systemd/system

CC ?= cc
OPT ?= -O2
B := build
PY := /usr/bin/python3

# Debian packages the build, the tests and the demo need.
DEB_PKGS := make gcc libc6-dev pkg-config libzmq3-dev libprotobuf-c-dev protobuf-c-compiler \
	libuv1-dev libpng-dev libopenblas-dev libjansson-dev libsodium-dev libinih-dev libsystemd-dev libmicrohttpd-dev \
	check valgrind protobuf-compiler python3-zmq python3-protobuf python3-numpy python3-torch python3-pil python3-prometheus-client \
	clang libclang-rt-14-dev
PKG_LIBS := libzmq libprotobuf-c libuv libpng openblas jansson libsodium inih libsystemd libmicrohttpd

WARN := -Wall -Wextra -Wpedantic -Wshadow -Wstrict-prototypes -Wmissing-prototypes -Wformat=2 -Wvla
ifeq ($(WERROR),1)
WARN += -Werror
endif
SAN_FLAGS :=
ifneq ($(SANITIZE),)
SAN_FLAGS := -fsanitize=$(SANITIZE) -fno-omit-frame-pointer -fno-sanitize-recover=all
endif

PKG_CFLAGS = $(shell pkg-config --cflags $(PKG_LIBS) 2>/dev/null)
PKG_LDLIBS = $(shell pkg-config --libs $(PKG_LIBS) 2>/dev/null)
CFLAGS := -std=c11 -D_GNU_SOURCE $(OPT) -g $(WARN) $(SAN_FLAGS) -pthread -fPIC \
	-Icommon -Iclient -I$(B)/proto $(PKG_CFLAGS) $(EXTRA_CFLAGS)
LDFLAGS := $(SAN_FLAGS) -pthread $(EXTRA_LDFLAGS)
LDLIBS := $(PKG_LDLIBS) -lm

# Objects depend on the flags they were built with: switching SANITIZE or OPT
# rebuilds everything instead of mixing instrumented and plain objects.
FLAGS_STAMP := $(B)/.flags
FLAGS_NOW := $(CC) $(CFLAGS) $(LDFLAGS)
$(shell mkdir -p $(B) && (printf '%s\n' '$(FLAGS_NOW)' | cmp -s - $(FLAGS_STAMP) || printf '%s\n' '$(FLAGS_NOW)' > $(FLAGS_STAMP)))

ifneq ($(V),1)
Q := @
endif

# Sources are found by pattern, so adding a module needs no Makefile edit:
#   common/*.c           the core library (engine, files, data)   -> build/libldcore.a
#   proto/*.proto        wire messages (protoc-c)                  -> build/proto/
#   daemon/*.c           the sampler daemon: every module but ldd_main.c
#                        -> build/libldd.a (the C tests link it) -> build/langdaugd
#   client/ld_*.c        the client library                        -> build/liblangdaug.{a,so}
#   common/tools/*.c     the `langdaug` command (offline tools on the core,
#                        network commands on the client library) -> build/langdaug
#   tests/test_*.c       one Check suite each, + tests/testutil.c  -> build/tests/
#                        (test_ldd_*.c also link libldd.a and tests/ldd_fixture.c)
#   tests/bench_*.c      benchmarks                                -> build/tests/
#   examples/*.c         example programs on liblangdaug           -> build/examples/
CORE_SRC := $(sort $(wildcard common/*.c))
PROTO_SRC := $(sort $(wildcard proto/*.proto))
PROTO_C := $(patsubst proto/%.proto,$(B)/proto/%.pb-c.c,$(PROTO_SRC))
PROTO_H := $(PROTO_C:.c=.h)
# Python message classes live inside the Python package (generated, not tracked).
PY_PROTO := $(patsubst proto/%.proto,client/python/langdaug/%_pb2.py,$(PROTO_SRC))
DAEMON_SRC := $(sort $(wildcard daemon/*.c))
CLIENTLIB_SRC := $(sort $(wildcard client/ld_*.c))
CLI_SRC := $(sort $(wildcard common/tools/*.c))
TEST_SRC := $(sort $(wildcard tests/test_*.c))
BENCH_SRC := $(sort $(wildcard tests/bench_*.c))
EXAMPLE_SRC := $(sort $(wildcard examples/*.c))

CORE_OBJ := $(CORE_SRC:%.c=$(B)/%.o)
PROTO_OBJ := $(PROTO_C:.c=.o)
DAEMON_OBJ := $(DAEMON_SRC:%.c=$(B)/%.o)
DAEMON_MAIN_OBJ := $(B)/daemon/ldd_main.o
DAEMON_LIB := $(B)/libldd.a
CLIENTLIB_OBJ := $(CLIENTLIB_SRC:%.c=$(B)/%.o)
CLI_OBJ := $(CLI_SRC:%.c=$(B)/%.o)
TEST_BIN := $(TEST_SRC:tests/%.c=$(B)/tests/%)
BENCH_BIN := $(BENCH_SRC:tests/%.c=$(B)/tests/%)
EXAMPLE_BIN := $(EXAMPLE_SRC:examples/%.c=$(B)/examples/%)

CORE_LIB := $(B)/libldcore.a
TARGETS := $(CORE_LIB)
ifneq ($(CLI_SRC),)
TARGETS += $(B)/langdaug
endif
ifneq ($(DAEMON_SRC),)
TARGETS += $(B)/langdaugd
endif
ifneq ($(CLIENTLIB_SRC),)
TARGETS += $(B)/liblangdaug.a $(B)/liblangdaug.so
endif
VERSION := $(shell sed -n 's/^#define LD_VERSION "\(.*\)"$$/\1/p' common/ld_version.h)

.PHONY: all deps test tsan bench demo fuzz fuzz-long soak install clean print-deps
# Generated sources are kept (make would delete them as intermediates).
.SECONDARY: $(PROTO_C) $(PROTO_H)
all: $(TARGETS) $(TEST_BIN) $(BENCH_BIN) $(EXAMPLE_BIN) $(PY_PROTO)

# The dependency step: install missing Debian packages when root, otherwise
# print the one apt-get command needed and stop.
deps:
	$(Q)missing=""; for p in $(DEB_PKGS); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "deps: installing$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	  else \
	    echo "deps: missing Debian packages. Run:"; echo "  sudo apt-get install -y$$missing"; exit 1; \
	  fi; \
	fi

print-deps:
	@echo $(DEB_PKGS)

$(B)/%.o: %.c $(PROTO_H) $(FLAGS_STAMP)
	@mkdir -p $(dir $@)
	@echo "  CC   $<"
	$(Q)$(CC) $(CFLAGS) -MMD -MP -c $< -o $@

$(B)/proto/%.pb-c.c $(B)/proto/%.pb-c.h: proto/%.proto
	@mkdir -p $(B)/proto
	@echo "  PROTO $<"
	$(Q)protoc-c --c_out=$(B)/proto -Iproto $<

client/python/langdaug/%_pb2.py: proto/%.proto
	@echo "  PROTO $< (python)"
	$(Q)protoc --python_out=client/python/langdaug -Iproto $<

$(B)/proto/%.pb-c.o: $(B)/proto/%.pb-c.c $(FLAGS_STAMP)
	$(Q)$(CC) $(filter-out -Wmissing-prototypes,$(CFLAGS)) -c $< -o $@

$(CORE_LIB): $(CORE_OBJ) $(PROTO_OBJ)
	@echo "  AR   $@"
	$(Q)rm -f $@ && ar rcs $@ $^

$(B)/langdaug: $(CLI_OBJ) $(CLIENTLIB_OBJ) $(CORE_LIB)
	@echo "  LD   $@"
	$(Q)$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(DAEMON_LIB): $(filter-out $(DAEMON_MAIN_OBJ),$(DAEMON_OBJ))
	@echo "  AR   $@"
	$(Q)rm -f $@ && ar rcs $@ $^

$(B)/langdaugd: $(DAEMON_MAIN_OBJ) $(DAEMON_LIB) $(CORE_LIB)
	@echo "  LD   $@"
	$(Q)$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

# liblangdaug.{a,so}: the client and the two core modules it calls (ld_error,
# ld_log) with the messages, compiled apart with -fvisibility=hidden. The .so
# exports only what the installed headers (PUBLIC_H) mark LD_EXTERN and needs only
# ZeroMQ and protobuf-c; the engine stays in libldcore.a (tests/test_client_abi.py).
CLIENTLIB_LIB_OBJ := $(patsubst %.c,$(B)/clientlib/%.o,$(CLIENTLIB_SRC) common/ld_error.c common/ld_log.c) \
	$(patsubst $(B)/%.c,$(B)/clientlib/%.o,$(PROTO_C))
CLIENTLIB_LIBS = $(shell pkg-config --libs libzmq libprotobuf-c 2>/dev/null) -lm
SONAME := liblangdaug.so.$(firstword $(subst ., ,$(VERSION)))
PUBLIC_H := client/ld_client.h common/ld_error.h common/ld_log.h common/ld_keep.h common/ld_export.h

$(B)/clientlib/%.o: %.c $(PROTO_H) $(FLAGS_STAMP)
	@mkdir -p $(dir $@)
	@echo "  CC   $< (liblangdaug)"
	$(Q)$(CC) $(CFLAGS) -fvisibility=hidden -MMD -MP -c $< -o $@

$(B)/clientlib/proto/%.pb-c.o: $(B)/proto/%.pb-c.c $(FLAGS_STAMP)
	@mkdir -p $(dir $@)
	$(Q)$(CC) $(filter-out -Wmissing-prototypes,$(CFLAGS)) -fvisibility=hidden -c $< -o $@

$(B)/liblangdaug.a: $(CLIENTLIB_LIB_OBJ)
	$(Q)rm -f $@ && ar rcs $@ $^

$(B)/liblangdaug.so.$(VERSION): $(CLIENTLIB_LIB_OBJ)
	@echo "  LD   $@"
	$(Q)$(CC) -shared $(LDFLAGS) -Wl,-soname,$(SONAME) -Wl,--no-undefined -Wl,--as-needed -o $@ $^ \
	  $(CLIENTLIB_LIBS)

$(B)/liblangdaug.so: $(B)/liblangdaug.so.$(VERSION)
	$(Q)ln -sf $(notdir $<) $(B)/$(SONAME) && ln -sf $(SONAME) $@

# Examples link the client library as a user's program would.
$(B)/examples/%: examples/%.c $(B)/liblangdaug.a $(FLAGS_STAMP)
	@mkdir -p $(dir $@)
	@echo "  LD   $@"
	$(Q)$(CC) $(CFLAGS) -o $@ $< $(B)/liblangdaug.a $(LDFLAGS) $(CLIENTLIB_LIBS)

$(B)/tests/%: tests/%.c $(B)/tests/testutil.o $(CORE_LIB) $(CLIENTLIB_OBJ) $(PROTO_H) $(FLAGS_STAMP)
	@mkdir -p $(dir $@)
	@echo "  TEST $@"
	$(Q)$(CC) $(CFLAGS) -MMD -MP -Itests -o $@ $< $(B)/tests/testutil.o $(CLIENTLIB_OBJ) $(CORE_LIB) \
	  $(LDFLAGS) $(LDLIBS) $(shell pkg-config --libs check 2>/dev/null)

# The daemon's suites: the daemon library and the shared daemon fixture.
$(B)/tests/test_ldd_%: tests/test_ldd_%.c $(B)/tests/testutil.o $(B)/tests/ldd_fixture.o $(DAEMON_LIB) $(CORE_LIB) \
		$(PROTO_H) $(FLAGS_STAMP)
	@mkdir -p $(dir $@)
	@echo "  TEST $@"
	$(Q)$(CC) $(CFLAGS) -MMD -MP -Itests -Idaemon -o $@ $< $(B)/tests/testutil.o $(B)/tests/ldd_fixture.o $(DAEMON_LIB) \
	  $(CORE_LIB) $(LDFLAGS) $(LDLIBS) $(shell pkg-config --libs check 2>/dev/null)

$(B)/tests/ldd_fixture.o: tests/ldd_fixture.c tests/ldd_fixture.h $(PROTO_H) $(FLAGS_STAMP)
	@mkdir -p $(dir $@)
	$(Q)$(CC) $(CFLAGS) -MMD -MP -Itests -Idaemon -c $< -o $@

$(B)/tests/testutil.o: tests/testutil.c tests/testutil.h $(FLAGS_STAMP)
	@mkdir -p $(dir $@)
	$(Q)$(CC) $(CFLAGS) -MMD -MP -Itests -c $< -o $@

test: deps
	$(Q)$(MAKE) --no-print-directory all
	$(Q)LD_BUILD=$(B) LD_PY=$(PY) tests/run

# TSan runs code 5-15x slower: Check's timeouts are stretched, and tests tagged
# timing (real-clock deadlines under a second) are left to make test.
TSAN_B := build-tsan
tsan: deps
	$(Q)$(MAKE) --no-print-directory all B=$(TSAN_B) SANITIZE=thread
	$(Q)LD_BUILD=$(TSAN_B) LD_PY=$(PY) LD_SUITES=tests/tsan-suites CK_TIMEOUT_MULTIPLIER=20 \
		CK_EXCLUDE_TAGS=timing tests/run

bench: deps
	$(Q)$(MAKE) --no-print-directory all OPT="-O3"
	$(Q)LD_BUILD=$(B) LD_PY=$(PY) tests/bench

demo: deps
	$(Q)$(MAKE) --no-print-directory all
	$(Q)LD_BUILD=$(B) LD_PY=$(PY) examples/demo

FUZZ_SECONDS ?= 20
FUZZ_SEED ?=
fuzz: deps
	$(Q)FUZZ_BUILD=$(B)/fuzz FUZZ_SEED=$(FUZZ_SEED) tests/fuzz/run $(FUZZ_SECONDS)

FUZZ_LONG_SECONDS ?= 3600
fuzz-long: deps
	$(Q)FUZZ_BUILD=$(B)/fuzz FUZZ_KEEP=1 tests/fuzz/run $(FUZZ_LONG_SECONDS)

SOAK_SECONDS ?= 3600
soak: deps
	$(Q)$(MAKE) --no-print-directory all
	$(Q)LD_BUILD=$(abspath $(B)) $(PY) tests/soak.py --seconds $(SOAK_SECONDS) --csv $(B)/soak.csv

# Headers: only the client library's public ones (the engine is not a library users link).
# The pkg-config file is written here, with the PREFIX of this install.
install: all
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(LIBDIR)/pkgconfig $(DESTDIR)$(INCDIR)/langdaug
	install -m 755 $(filter $(B)/langdaug $(B)/langdaugd,$(TARGETS)) $(DESTDIR)$(BINDIR)/
ifneq ($(CLIENTLIB_SRC),)
	install -m 644 $(PUBLIC_H) $(DESTDIR)$(INCDIR)/langdaug/
	install -m 644 $(B)/liblangdaug.a $(DESTDIR)$(LIBDIR)/
	install -m 755 $(B)/liblangdaug.so.$(VERSION) $(DESTDIR)$(LIBDIR)/
	ln -sf liblangdaug.so.$(VERSION) $(DESTDIR)$(LIBDIR)/$(SONAME)
	ln -sf $(SONAME) $(DESTDIR)$(LIBDIR)/liblangdaug.so
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@LIBDIR@|$(LIBDIR)|' -e 's|@INCDIR@|$(INCDIR)|' \
	  -e 's|@VERSION@|$(VERSION)|' client/langdaug.pc.in > $(DESTDIR)$(LIBDIR)/pkgconfig/langdaug.pc
endif
	install -d $(DESTDIR)$(UNITDIR) $(DESTDIR)$(SYSCONFDIR)/langdaug
	for u in systemd/*.service; do \
	  sed 's|/usr/local/bin/|$(BINDIR)/|g' $$u > $(DESTDIR)$(UNITDIR)/$$(basename $$u) && chmod 644 $(DESTDIR)$(UNITDIR)/$$(basename $$u); \
	done
	install -m 644 examples/langdaugd.conf $(DESTDIR)$(SYSCONFDIR)/langdaug/langdaugd.conf.example

clean:
	rm -rf $(B)

-include $(shell find $(B) -name '*.d' 2>/dev/null)
