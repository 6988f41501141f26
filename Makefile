# Vigil: two entry points, `make run` and `make test`; everything else is set-up they need.
SHELL        := /bin/bash
# Debian's interpreter, which users run: never whichever python3 is first on PATH.
PYTHON       := /usr/bin/python3
VENV         := .venv
VPY          := $(VENV)/bin/python
BUILD        := build
BPF_SRCS     := $(wildcard bpf/*.bpf.c)
BPF_OBJS     := $(patsubst bpf/%.bpf.c,$(BUILD)/bpf/%.bpf.o,$(BPF_SRCS))
BPF_HDRS     := $(wildcard bpf/include/*.h bpf/lib/*.h bpf/generic/*.h)
APT_PKGS     := clang llvm libbpf-dev bpftool python3-venv iproute2
EXPORT_FILE  ?= /var/log/vigil/vigil.log
PYTEST_ARGS  ?=

.PHONY: all run lint test test-host test-vm test-k8s k8s-env k8s-image fuzz deps venv lock bpf native proto deb install prometheus clean

all: deps venv bpf native proto

# Debian packages for the BPF build (compiler, libbpf headers, bpftool). Installed only when missing.
$(BUILD)/.deps:
	@mkdir -p $(BUILD)
	@missing=""; \
	command -v clang >/dev/null || missing="$$missing clang"; \
	command -v llvm-strip >/dev/null || missing="$$missing llvm"; \
	[ -f /usr/include/bpf/bpf_helpers.h ] || missing="$$missing libbpf-dev"; \
	[ -f /usr/include/stdio.h ] || missing="$$missing libc6-dev"; \
	[ -x $(PYTHON) ] || missing="$$missing python3"; \
	command -v bpftool >/dev/null || [ -x /usr/sbin/bpftool ] || missing="$$missing bpftool"; \
	command -v ip >/dev/null || [ -x /usr/sbin/ip ] || missing="$$missing iproute2"; \
	$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || missing="$$missing python3-venv"; \
	[ -f "$$($(PYTHON) -c 'import sysconfig; print(sysconfig.get_paths()["include"])')/Python.h" ] || missing="$$missing python3-dev"; \
	if [ -n "$$missing" ]; then \
	  echo ">> apt-get install$$missing"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing; \
	fi
	@touch $@
deps: $(BUILD)/.deps

# The venv is rebuilt when it was made by another interpreter than $(PYTHON).
$(VENV)/.installed: pyproject.toml constraints.txt $(BUILD)/.deps
	@want=$$(readlink -f $(PYTHON)); have=$$(cat $(VENV)/.python 2>/dev/null); \
	if [ "$$want" != "$$have" ]; then rm -rf $(VENV); fi
	@[ -x $(VPY) ] || $(PYTHON) -m venv $(VENV)
	@readlink -f $(PYTHON) > $(VENV)/.python
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -c constraints.txt -e '.[test]'
	@touch $@
venv: $(VENV)/.installed

# constraints.txt: the newest versions that pyproject.toml allows, resolved in a scratch venv made
# by $(PYTHON); run make test after refreshing it, then commit both.
lock: $(BUILD)/.deps
	@rm -rf $(BUILD)/lock-venv && $(PYTHON) -m venv $(BUILD)/lock-venv
	$(BUILD)/lock-venv/bin/python -m pip install -q --upgrade pip
	$(BUILD)/lock-venv/bin/python -m pip install -q -e '.[test,k8s,k8s-test]'
	@{ sed -n '/^#/p' constraints.txt; $(BUILD)/lock-venv/bin/python -m pip freeze --all --exclude-editable --exclude pip; } > constraints.txt.new
	@mv constraints.txt.new constraints.txt && rm -rf $(BUILD)/lock-venv
	@git diff --stat constraints.txt

BPFTOOL := $(shell command -v bpftool 2>/dev/null || echo /usr/sbin/bpftool)

# vmlinux.h comes from the running kernel's BTF; it is generated, never committed.
$(BUILD)/vmlinux.h: $(BUILD)/.deps
	@mkdir -p $(BUILD)
	$(BPFTOOL) btf dump file /sys/kernel/btf/vmlinux format c > $@.tmp && mv $@.tmp $@

BPF_CFLAGS := -g -O2 -target bpf -D__TARGET_ARCH_x86 -Wall -Wno-unused-function -Wno-gnu-variable-sized-type-not-at-end \
              -Ibpf/include -Ibpf/lib -I$(BUILD) -I/usr/include/x86_64-linux-gnu

$(BUILD)/bpf/%.bpf.o: bpf/%.bpf.c $(BPF_HDRS) $(BUILD)/vmlinux.h
	@mkdir -p $(dir $@)
	clang $(BPF_CFLAGS) -c $< -o $@.tmp && mv $@.tmp $@

bpf: $(BPF_OBJS)

# Native helpers (no Python lock on their paths): the fanotify permission helper.
NATIVE_CFLAGS := -O2 -g -Wall -Wextra -pthread
$(BUILD)/native/vigil-permd: native/permd.c native/permd.h $(BUILD)/.deps
	@mkdir -p $(dir $@)
	clang $(NATIVE_CFLAGS) -o $@.tmp native/permd.c && mv $@.tmp $@

# The agent's per-event hot path, compiled (vigil/_fastpath; pure-Python twins are the
# reference, VIGIL_PURE_PYTHON=1 runs without it). Built against $(PYTHON)'s headers, with
# -DNDEBUG as setuptools builds extensions: without it the headers' assert()s (type checks in
# every PyTuple_GET_ITEM, Py_SIZE, ...) run on the hot path (10% of the object's code).
PY_INCLUDE   = $(shell $(PYTHON) -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
PY_EXT       = $(shell $(PYTHON) -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')
FASTPATH     = vigil/_fastpath$(PY_EXT)
$(FASTPATH): native/fastpath.c bpf/include/vigil_events.h $(BUILD)/.deps
	clang -O2 -g -DNDEBUG -Wall -Wextra -Werror -Wno-missing-field-initializers -Wno-unused-parameter -fPIC -shared \
	  -I$(PY_INCLUDE) -Ibpf/include -o $@.tmp native/fastpath.c && mv $@.tmp $@
native: $(BUILD)/native/vigil-permd $(FASTPATH)

# gRPC stubs are generated from our own .proto files at build time.
PROTOS := $(wildcard proto/tetragon/*.proto)
$(BUILD)/.proto: $(PROTOS) $(VENV)/.installed
	@if [ -n "$(PROTOS)" ]; then $(VPY) -m vigil.api.genproto; fi
	@touch $@
proto: $(BUILD)/.proto

run: all
	@mkdir -p $(dir $(EXPORT_FILE))
	$(VENV)/bin/vigil agent --export-filename $(EXPORT_FILE) --print-events compact

# Host operations: a Debian package (`make deb`), installed with `make install` (systemd unit,
# /etc/vigil, the policy library and the Grafana dashboard; see install/build-deb.sh).
VERSION      := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
DEB          := $(BUILD)/vigil_$(VERSION)_$(shell dpkg --print-architecture 2>/dev/null || echo amd64).deb
DEB_SRCS     := $(shell git ls-files vigil policies install native bpf pyproject.toml README.md 2>/dev/null)
$(DEB): $(DEB_SRCS) $(BPF_OBJS) $(BUILD)/native/vigil-permd $(BUILD)/.proto $(FASTPATH)
	install/build-deb.sh $(PYTHON) $@
deb: $(DEB)

install: $(DEB)
	dpkg -i $(DEB)

# A real Prometheus for the dashboard test: Debian's package, unpacked here (never installed,
# so no service starts); the test runs its own server on a loopback port.
PROMETHEUS   := $(BUILD)/prometheus/usr/bin/prometheus
$(PROMETHEUS): $(BUILD)/.deps
	@mkdir -p $(BUILD)/prometheus/dl
	cd $(BUILD)/prometheus/dl && rm -f prometheus_*.deb && \
	  { apt-get download -qq prometheus 2>/dev/null || { apt-get update -qq && apt-get download -qq prometheus; }; }
	dpkg-deb -x $(BUILD)/prometheus/dl/prometheus_*.deb $(BUILD)/prometheus
	@touch $@
prometheus: $(PROMETHEUS)

# ruff and mypy (configured in pyproject.toml), before any test: zero findings or the run stops.
lint: $(VENV)/.installed $(BUILD)/.proto
	$(VPY) -m ruff check --cache-dir $(BUILD)/ruff-cache vigil tests bench
	$(VPY) -m mypy

test: lint all k8s-env $(PROMETHEUS) $(DEB)
	$(VPY) -m pytest $(PYTEST_ARGS)
	$(MAKE) --no-print-directory test-vm

test-host: lint all k8s-env $(PROMETHEUS) $(DEB)
	$(VPY) -m pytest $(PYTEST_ARGS)

# Longer, unseeded policy fuzzing: the front end with 100,000 policies, 3,000 real loads.
fuzz: all
	VIGIL_FUZZ_EXAMPLES=100000 VIGIL_FUZZ_RANDOM=1 VIGIL_FUZZ_LIVE=3000 VIGIL_FUZZ_SEED=$$RANDOM \
	  $(VPY) -m pytest -s -p no:cacheprovider tests/unit/test_policy_fuzz.py tests/kernel/test_policy_fuzz_live.py

# ---- Kubernetes tier (tests/k8s): a real kube-apiserver + etcd, containerd CRI + runc, Helm.
# kube-apiserver is built from Debian 12's `kubernetes` source package with Debian's Go and
# cached outside the repository ($(K8S_CACHE)); see tests/k8s/README.md.
K8S_CACHE ?= /var/cache/vigil-k8s
K8S_APT   := containerd runc etcd-server busybox-static buildah debootstrap openssl
k8s-env: $(VENV)/.k8s-installed $(BUILD)/.k8s-deps
	@tests/k8s/env/build-kube-apiserver.sh $(K8S_CACHE)
	@[ $(BUILD)/k8s/cri/cri_api_pb2.py -nt $(K8S_CACHE)/cri/api.proto ] || \
	  $(VPY) -m tests.k8s.env.gencri $(K8S_CACHE)/cri/api.proto $(BUILD)/k8s/cri
	@$(MAKE) --no-print-directory k8s-image

$(BUILD)/.k8s-deps: $(BUILD)/.deps
	@missing=""; for p in $(K8S_APT); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then echo ">> apt-get install$$missing"; export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -qq --no-install-recommends $$missing >/dev/null || \
	  { apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing >/dev/null; }; fi
	@touch $@

$(VENV)/.k8s-installed: pyproject.toml constraints.txt $(VENV)/.installed
	$(VPY) -m pip install -q -c constraints.txt -e '.[test,k8s,k8s-test]'
	@touch $@

# The agent's container image (install/kubernetes/image): a debootstrap rootfs made into an OCI
# archive with buildah, cached in $(K8S_CACHE)/image by the hash of what goes into it.
k8s-image: all $(VENV)/.k8s-installed $(BUILD)/.k8s-deps
	@install/kubernetes/image/build.sh $(K8S_CACHE)/image

test-k8s: all k8s-env
	$(VPY) -m pytest tests/k8s $(PYTEST_ARGS)

test-vm: all
	$(VPY) -m vigil.vmtier run

clean:
	rm -rf $(BUILD) .pytest_cache
