# Two commands for a fresh machine:  `make lab` (install, prepare, open the suite)  and  `make test`.
# Both are idempotent: a second run reuses the environment, the converted model and the prepared data.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.adainfer-installed
# Jupyter refuses to start as root (containers, Colab) unless told --allow-root: added only for root.
USER_ID ?= $(shell id -u)
JUPYTER_FLAGS := $(if $(filter 0,$(USER_ID)),--allow-root)

.PHONY: lab test test-models install prepare reproduce benchmark clean-cache

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

prepare: install
	$(PY) -m adainfer_lib.data.prepare --models smollm2-135m gemma3-270m

lab: prepare
	$(VENV)/bin/jupyter lab $(JUPYTER_FLAGS) notebooks/

# One pytest-xdist worker per core (each computes on its share of the cores, tests/conftest.py); a model's
# notebooks run in order on one worker (tests/test_notebooks.py). TEST_WORKERS=0 runs everything in this process.
TEST_WORKERS ?= $(shell $(PYTHON) -c "import os; print(min(os.cpu_count() or 1, 4))")

XDIST = $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadgroup)

test: prepare
	$(PY) -m pytest $(XDIST)

# Every chapter in quick mode on the second offline model, gemma3-270m (left out of `make test`: CI's 15 minutes);
# in one process with all threads, since one model's chapters run in order anyway.
test-models: prepare
	$(PY) -m pytest -m second_model tests/test_notebooks.py

benchmark: prepare
	$(PY) benchmarks/trace_throughput.py
	$(PY) benchmarks/early_exit_speed.py
	$(PY) benchmarks/fingerprint_cost.py
	$(PY) benchmarks/reader_exits.py   # readers vs the lens: agreement and exits (no timing; minutes at n=200)

clean-cache:
	rm -rf data/traces data/policies

# The second family's lane (gemma3-270m, chapters 01 and 03, n capped at 200 per seed: CPU time) runs beside the
# default model's chapter 01, then the other chapters that time nothing (00, 03, 05) take its place, one thread each;
# the chapters that measure wall-clock run after, alone.
reproduce: prepare
	$(PY) tools/reproduce.py --alongside "--model gemma3-270m --n 200 01 03"

# A class (issue 23): every chapter in class mode (adainfer_lib/course/modes.py), writing under build/class/
# (never results/). `make class-prepare` the day before fills the trace caches (the chapters that trace, once).
.PHONY: class class-prepare
class: prepare
	$(PY) tools/reproduce.py --mode class

class-prepare: prepare
	$(PY) tools/reproduce.py --mode class --prepare
