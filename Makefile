# Two commands for a fresh Debian machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: demo test lint bench soak clean

$(BIN)/reconciler: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

demo: $(BIN)/reconciler
	$(BIN)/reconciler demo

test: $(BIN)/reconciler lint
	$(BIN)/python -m pytest -q

lint: $(BIN)/reconciler
	$(BIN)/ruff check reconciler tests bench
	$(BIN)/ruff format --check reconciler tests bench
	$(BIN)/mypy --strict reconciler

bench: $(BIN)/reconciler
	$(BIN)/python bench/run.py

# 1000 runs of the daemon's loop in one process, with drift between them: RSS, fds, threads.
soak: $(BIN)/reconciler
	$(BIN)/python bench/soak.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
