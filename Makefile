# Two commands for a fresh Debian machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

TESTED := $(VENV)/.test-extras

.PHONY: demo test test-deps lint bench soak fuzz clean

# What the demo needs: reconciler and its runtime dependencies.
$(BIN)/reconciler: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e .
	touch $@

# What the tests need besides: pytest, hypothesis, mypy, ruff, atheris.
$(TESTED): $(BIN)/reconciler
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

demo: $(BIN)/reconciler
	$(BIN)/reconciler demo

# The Debian packages of deploy/test-packages.txt: installed when missing (as root), or the
# command that installs them is printed and the target fails.
test-deps:
	@deploy/test-deps.sh

test: test-deps $(TESTED) lint
	$(BIN)/python -m pytest -q

lint: $(TESTED)
	$(BIN)/ruff check reconciler tests bench fuzz
	$(BIN)/ruff format --check reconciler tests bench fuzz
	$(BIN)/mypy --strict reconciler

bench: $(TESTED)
	$(BIN)/python bench/run.py

# 1000 runs of the daemon's loop in one process, with drift between them: RSS, fds, threads.
soak: $(TESTED)
	$(BIN)/python bench/soak.py

# Each atheris fuzz target for FUZZ_SECONDS, from the seeds: new inputs go to fuzz/work/,
# failing inputs to fuzz/findings/ (docs/development.md, "Fuzzing").
FUZZ_SECONDS ?= 600
fuzz: $(TESTED)
	@mkdir -p fuzz/findings
	@status=0; for target in model webhook; do \
	  mkdir -p fuzz/work/$$target; \
	  { $(BIN)/python fuzz/fuzz_$$target.py -max_total_time=$(FUZZ_SECONDS) -timeout=30 \
	      -print_final_stats=1 -artifact_prefix=fuzz/findings/$$target- \
	      fuzz/work/$$target fuzz/corpus/$$target 2>&1; echo $$? > fuzz/work/$$target.status; } \
	    | grep -v '^INFO: Instrumenting'; \
	  [ "$$(cat fuzz/work/$$target.status)" = 0 ] || status=1; \
	done; echo "findings: $$(ls fuzz/findings | wc -l) in fuzz/findings/"; exit $$status

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
