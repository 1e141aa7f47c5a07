# `make run` and `make test` set everything up on a fresh machine; both are idempotent.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: run test setup clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch==2.13.0 first: it resolves to the CPU build on disk, so the package's torch>=2.6 is already met.
# constraints.txt: the exact versions the golden ledgers reproduce with (a newer library can move a number).
$(STAMP): pyproject.toml constraints.txt | $(PY)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/fedsim run scenarios/quickstart.yaml

# Lint (ruff), layering (import-linter: see [tool.importlinter] in pyproject.toml), then the tests on two pytest-xdist
# workers, each module's tests on one of them (tests/conftest.py says why and in what order). OMP_WAIT_POLICY=PASSIVE:
# torch's idle OpenMP threads sleep instead of spinning, so two workers (and the processes a test starts) do not burn
# each other's core; it changes no number.
test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports
	OMP_WAIT_POLICY=PASSIVE $(PY) -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder --durations=15

clean:
	rm -rf $(VENV) runs
