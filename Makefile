# Two commands do everything on a fresh clone:
#   make run    install (idempotent) and run the default campaign configs/campaign.yaml
#   make test   install (idempotent) and run the test suite (what CI runs)
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
OUT ?= runs/default
APT_PACKAGES := libxc-dev libopenblas-dev liblapack-dev libfftw3-dev
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# optional packages never stop at a password prompt
SUDO_N := $(shell [ "$$(id -u)" = 0 ] || echo sudo -n)
OFFLINE := scripts/loopback-only

.PHONY: install run test test-fast benchmark clean

install: $(VENV)/.installed

# Debian packages GPAW links against; skipped when already present. chromium (the campaign report's
# browser test) is best effort: without it that one test skips and says why.
$(VENV)/.apt:
	@dpkg -s $(APT_PACKAGES) >/dev/null 2>&1 || \
	  ($(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq $(APT_PACKAGES))
	@dpkg -s chromium >/dev/null 2>&1 || ($(SUDO_N) apt-get update -qq && \
	  $(SUDO_N) apt-get install -y -qq --no-install-recommends chromium) \
	  || echo "chromium not installed: the report's browser test will be skipped"
	@mkdir -p $(VENV) && touch $@

# torch is installed first and pinned so pip takes the local CPU wheel, not CUDA packages.
# GPAW's C extension builds with g++ (CC=g++), as DFT.md prescribes.
$(VENV)/.installed: pyproject.toml $(VENV)/.apt
	@[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	CC=g++ $(BIN)/pip install -q -e ".[dev]"
	@touch $@

run: install
	$(OFFLINE) $(BIN)/discovery run configs/campaign.yaml --out $(OUT) $$([ -d $(OUT) ] && echo --resume)

test: install
	$(OFFLINE) $(BIN)/pytest -m "not benchmark" tests

test-fast: install
	$(OFFLINE) $(BIN)/pytest -m "not benchmark and not slow" tests

benchmark: install
	$(OFFLINE) $(BIN)/python benchmarks/campaign_throughput.py

clean:
	rm -rf $(VENV) runs build *.egg-info
