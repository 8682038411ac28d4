# The two set-up commands: `make demo` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint clean venv

venv: $(STAMP)

# torch goes first, pinned, so no dependency pulls a multi-GB CUDA build.
$(STAMP): pyproject.toml
	@# Fashion-MNIST comes from Debian's archive: make sure apt knows the package (root only).
	@if command -v apt-cache >/dev/null && [ "$$(id -u)" = 0 ] && \
	  ! apt-cache show dataset-fashion-mnist >/dev/null 2>&1; then apt-get update -qq || true; fi
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/adamodal demo --out runs/demo

test: $(STAMP)
	$(BIN)/python -m pytest -q -n auto --dist loadfile --durations=15

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf runs .pytest_cache
