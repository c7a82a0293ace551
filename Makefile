# Two commands for a fresh Debian machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: demo test lint bench soak fuzz clean

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
	$(BIN)/ruff check reconciler tests bench fuzz
	$(BIN)/ruff format --check reconciler tests bench fuzz
	$(BIN)/mypy --strict reconciler

bench: $(BIN)/reconciler
	$(BIN)/python bench/run.py

# 1000 runs of the daemon's loop in one process, with drift between them: RSS, fds, threads.
soak: $(BIN)/reconciler
	$(BIN)/python bench/soak.py

# Each atheris fuzz target for FUZZ_SECONDS, from the seeds: new inputs go to fuzz/work/,
# failing inputs to fuzz/findings/ (docs/development.md, "Fuzzing").
FUZZ_SECONDS ?= 600
fuzz: $(BIN)/reconciler
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
