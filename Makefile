# lxdmig: the two commands are `make demo` and `make test` (see README.md).
VENV ?= .venv
PY := $(VENV)/bin/python
export LXDMIG_VENV := $(abspath $(VENV))

.PHONY: all install lint check quick test unit integration test-vm test-hosts vm-image typecheck demo testbed-up testbed-down rpm deb man bench clean

all: test

# Idempotent: installs system packages, CRIU >= 4 and the venv when missing.
install:
	scripts/install-deps

typecheck: install
	$(VENV)/bin/mypy

# ruff: pyflakes, pycodestyle (120 columns), isort, bugbear, pyupgrade (pyproject.toml).
lint: install
	$(VENV)/bin/ruff check lxdmig testbed tests

unit: install
	$(PY) -m pytest tests/unit

integration: install
	$(PY) -m pytest tests/integration

# The fast tier, after every change (about 15 s here; no test bed): lint, the type check and the
# unit tests.
check: install
	$(VENV)/bin/ruff check lxdmig testbed tests
	$(VENV)/bin/mypy
	$(PY) -m pytest -q tests/unit

# The quick integration tier (under 5 minutes here, the test bed included): the real test bed's moves,
# helper, trust, preflight and hostile-input tests, without the tests marked slow (the fault matrix, the
# LXD and Incus daemons, the system containers, the image builds, the repeatability run).
quick: install
	$(PY) -m pytest -m "integration and not slow" tests/integration

# The whole suite: lint, type check, then the host suite (unit tests, the real test bed) followed by
# the two real hosts (tests/hosts, marked hosts), and beside both the slow VM suite (pre-copy and
# hybrid on a soft-dirty kernel under qemu, marked vm; its output is shown at the end).
# LXDMIG_SERIAL=1 runs the three one after the other.
test: install
	$(VENV)/bin/ruff check lxdmig testbed tests
	$(VENV)/bin/mypy
	scripts/run-suites

# Only the VM suite (builds its cached image on first use).
test-vm: install
	$(PY) -m pytest -m vm tests/vm

# Two real (virtual) hosts: Debian 12 under systemd and AppArmor, lxdmig installed from make deb's
# packages with apt (tests/hosts; marked hosts; make test runs it after the host suite).
test-hosts: install
	$(PY) -m pytest -m hosts tests/hosts

vm-image: install
	$(PY) -m tests.vm.image build

demo: install
	scripts/demo

# Benchmarks (minutes to an hour, see docs/performance.md); BENCH_ARGS=--help lists the knobs.
bench: install
	$(PY) -m pip install -q -e ".[bench]"
	benchmarks/run $(BENCH_ARGS)

# Source and binary RPMs from contrib/lxdmig.spec, into build/rpm/.
rpm: install
	scripts/build-rpm

# The Debian package (debhelper, dh-python) from contrib/debian, into build/deb/.
deb: install
	scripts/build-deb

# Regenerate man/ from the argparse definitions and the config schema.
man: install
	$(PY) -m lxdmig.manpages

testbed-up: install
	scripts/testbed up

testbed-down:
	scripts/testbed down

clean:
	rm -rf build dist *.egg-info .mypy_cache .pytest_cache
