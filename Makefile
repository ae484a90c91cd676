# The two commands a newcomer needs: `make run` and `make test`. Both set everything up themselves.
SHELL := /bin/bash
VENV  ?= .venv
PY    := $(VENV)/bin/python
PIP   := $(VENV)/bin/pip -q --disable-pip-version-check
STAMP := $(VENV)/.installed
# Debian tools the ops tests drive (compose validation, promtool); installed when missing and root.
SYSTEM_TOOLS := docker-compose:docker-compose promtool:prometheus amtool:prometheus-alertmanager

.PHONY: setup system-deps run test bench release clean help

help:
	@echo "make run    - set up (first time), build deepseek-tiny if missing, start the local stack"
	@echo "make test   - set up (first time), run the test suite offline"
	@echo "make bench  - run the benchmarks under bench/ (long)"
	@echo "make release - tests with coverage, then the evaluation gate (refuses unless both pass)"

# torch first, pinned, from the CPU wheel on disk; every later install goes through constraints.txt
# so nothing can replace it with a multi-GB CUDA build. Re-runs are a no-op until pyproject changes.
$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install torch==2.13.0
	$(PIP) install -c constraints.txt -e '.[all]'
	@touch $(STAMP)

setup: $(STAMP)

system-deps:
	@missing=""; for pair in $(SYSTEM_TOOLS); do tool=$${pair%%:*}; pkg=$${pair##*:}; \
	  command -v $$tool >/dev/null 2>&1 || missing="$$missing $$pkg"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then echo "installing Debian packages:$$missing"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing) >/dev/null 2>&1 \
	    || echo "warning: could not install$$missing; the ops tests that drive them will fail"; \
	  else echo "warning: not root; install the Debian packages$$missing"; fi; \
	fi

test: setup system-deps
	OMP_NUM_THREADS=1 $(PY) -m pytest $(PYTEST_ARGS)

run: setup
	$(VENV)/bin/dsv run

release: setup system-deps
	OMP_NUM_THREADS=1 $(VENV)/bin/dsv release

bench: setup
	@for b in bench/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache
