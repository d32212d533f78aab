# Thin wrappers; every target works on a fresh machine with Python >= 3.11.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
MIAS ?= ../shared/data/mini-mias
DATA ?= data/mini-mias
MODEL ?= auto
RUN ?= runs/$(MODEL)-$(shell date +%Y%m%d-%H%M%S)
# The slowest tests are listed after each run, to keep the suite inside its budget.
PYTEST_ARGS ?= --durations=12
# Two test processes (pytest-xdist): on 2 CPU cores (2026-11-27) the suite took 10 min 16 s
# to 13 min 50 s with two, and 18 min 24 s to 19 min 27 s with one: much of a test's
# time is single-threaded (tracing, process start-up, file I/O). worksteal balances the few
# long tests. TEST_WORKERS=0 runs them in this process.
TEST_WORKERS ?= 2

.PHONY: install browser demo test test-fast lint bench notebook clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

# The main job: prepare mini-MIAS (split by woman), train, evaluate on the test split.
demo: install
	@test -f $(DATA)/split.csv || $(BIN)/tumor-classifier prepare mini-mias $(MIAS) $(DATA)
	$(BIN)/tumor-classifier train $(DATA) --out $(RUN) --model $(MODEL)
	$(BIN)/tumor-classifier evaluate $(RUN) $(DATA)/test
	@echo "model: $(RUN)   test report: $(RUN)/evaluation/test/report.txt"

# The browser test drives Debian's chromium (a browser download is impossible offline);
# installed here when missing and apt-get is available (as root, as in CI).
browser:
	@test -x /usr/bin/chromium || ! command -v apt-get >/dev/null || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null)

test: install browser
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist worksteal $(PYTEST_ARGS)

test-fast: install
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy src

# Runs the notebook top to bottom; the executed copy (with images) stays outside git.
notebook: install
	mkdir -p build
	cd notebooks && ../$(BIN)/papermill tumor_classifier.ipynb ../build/tumor_classifier.executed.ipynb
	@echo "executed notebook: build/tumor_classifier.executed.ipynb"

bench: install
	$(BIN)/python benchmarks/decode.py
	$(BIN)/python benchmarks/pipeline.py
	$(BIN)/python benchmarks/memory.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache .mypy_cache
