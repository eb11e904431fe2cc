# Two entry points for a fresh machine: `make demo` (the Fashion-MNIST main job) and `make test`
# (lint, the documentation build and the tests).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
FMNIST := /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz
APT_FMNIST := apt-get install -y -q dataset-fashion-mnist || (apt-get update -q && apt-get install -y -q dataset-fashion-mnist)

.PHONY: demo test lint docs docs-check bench clean fmnist-if-possible

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,docs]'
	touch $(STAMP)

# the demo needs Debian's Fashion-MNIST package
$(FMNIST):
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then $(APT_FMNIST); \
	else echo "Fashion-MNIST is missing: run 'sudo apt-get install dataset-fashion-mnist'"; exit 1; fi

# the tests use it when it can be installed (a real-data test skips without it)
fmnist-if-possible:
	@if [ ! -e $(FMNIST) ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  ($(APT_FMNIST)) >/dev/null 2>&1 || echo "note: could not install dataset-fashion-mnist"; fi

demo: $(STAMP) $(FMNIST)
	$(VENV)/bin/smoothcert demo --out runs/demo

lint: $(STAMP)
	$(VENV)/bin/ruff check smoothcert tests benchmarks scripts
	$(VENV)/bin/mypy

# the documentation site (mkdocs.yml): any warning (a broken link, an API object that does not resolve) fails
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

# look at the built site in headless Chromium (Debian's package): screenshots in site-check/; not in CI
docs-check: docs
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || \
	  { [ "$$(id -u)" = 0 ] && (apt-get install -y -q chromium || (apt-get update -q && apt-get install -y -q chromium)); } || \
	  { echo "docs-check needs Chromium: sudo apt-get install chromium"; exit 1; }
	$(PY) scripts/docs_check.py

test: $(STAMP) fmnist-if-possible lint docs
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) benchmarks/certify_throughput.py

clean:
	rm -rf $(VENV) runs site site-check
