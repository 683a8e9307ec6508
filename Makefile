# The README's two commands: `make demo` and `make test`. Each creates .venv with the
# pinned dependencies on first use (a fresh machine needs only Python 3.11 and pip).
PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "shardc needs Python >= 3.11 (set PYTHON=...)"; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	@touch $(STAMP)

# tp=2 x pp=2 on four local devices: the plan has collectives and Send/Recv, so the demo
# shows sharding, and SHARDC_FAULT=die@1 make demo shows a rank failing in communication.
demo: $(STAMP)
	$(BIN)/shardc compile examples/models/tiny_gpt2.onnx --topology topologies/localhost.topo --set devices=4 --pin tp=2,pp=2 -o out/demo --force --report out/demo.html
	$(BIN)/shardc check-plan out/demo
	$(BIN)/shardc verify out/demo --procs

# Two pytest workers (a test module stays on one worker, so its exported models are made
# once): on CI's 2 cores the run takes about two thirds of the serial time. PYTEST_WORKERS=
# runs serially.
PYTEST_WORKERS ?= -n 2 --dist loadscope

# lint-imports through tools/lint_imports.py: it checks the installed shape (passes/ as
# shardc.passes), which a bare lint-imports cannot see. Contracts: pyproject.toml.
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy shardc passes
	$(BIN)/python tools/lint_imports.py
	$(BIN)/python -m pytest -q $(PYTEST_WORKERS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy shardc passes
	$(BIN)/python tools/lint_imports.py

clean:
	rm -rf $(VENV) out .pytest_cache .ruff_cache .mypy_cache
