# Two commands for a fresh machine: `make demo` and `make test`.
# Both create .venv (python3 -m venv) when it is missing and install the project
# with its dev extras; the install is redone only when pyproject.toml changes.

PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed

.PHONY: demo test setup sync-check nbtest pytest docs clean-venv

setup: $(STAMP)

$(STAMP): pyproject.toml tools/jupyter_server_config.py
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev]"
	@mkdir -p $(VENV)/etc/jupyter && cp tools/jupyter_server_config.py $(VENV)/etc/jupyter/   # nbdev's clean-on-save hook
	@touch $(STAMP)

# DEMO_ARGS passes options through, e.g. `make demo DEMO_ARGS='--epochs 1 --runs_dir /tmp/demo'` (tests/test_demo.py)
demo: $(STAMP)
	$(BIN)/python -m vitartifacts.demo $(DEMO_ARGS)

# Notebooks are the source: exporting or cleaning them must change nothing.
sync-check: $(STAMP)
	@before="$$(git status --porcelain)"; \
	$(BIN)/nbdev-export && $(BIN)/nbdev-clean || exit 1; \
	after="$$(git status --porcelain)"; \
	if [ "$$before" != "$$after" ]; then \
	  echo "nbdev-export / nbdev-clean changed files: notebooks and vitartifacts/ are out of sync, or notebooks carry outputs:"; \
	  git status --porcelain; exit 1; fi; \
	echo "notebooks and package in sync"

nbtest: $(STAMP)
	$(BIN)/nbdev-test --n-workers 2 --timing

# Most tests spend their time in subprocesses of one thread each (the installed command, papermill), so two run at a
# time (pytest-xdist); the ones marked `serial` (a browser, `make demo`, the docs build, torchrun) run alone after them.
PYTEST_WORKERS ?= 2
pytest: $(STAMP)
	$(BIN)/python -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile -m "not serial" --durations=15 tests/
	$(BIN)/python -m pytest -q -m serial --durations=10 tests/

test: sync-check nbtest pytest

# The docs site in _docs/: every library notebook a page, with the figures and tables it draws.
# The notebooks are committed without outputs, so they run first, as nbdev-test runs them (the cells
# flagged in tst_flags stay unrun), saved with their outputs into _executed/ (which git ignores by its
# own .gitignore); nbdev-docs renders that folder. nbs/workflows/ is left out: it reads trained runs.
# quarto is looked for in the venv first, then on PATH. DOCS_NBS picks the pages: tests/test_docs.py
# builds a site of only the pages it checks, since running every notebook again would take minutes.
DOCS_NBS ?= $(wildcard nbs/*.ipynb)
docs: export PATH := $(CURDIR)/$(BIN):$(PATH)
docs: $(STAMP)
	@command -v quarto >/dev/null || { echo "make docs needs quarto, in $(BIN) or on PATH: none was found"; exit 1; }
	rm -rf _executed && mkdir _executed && echo '*' > _executed/.gitignore
	cp $(DOCS_NBS) $(filter-out %.ipynb,$(wildcard nbs/*.*)) _executed/
	$(BIN)/nbdev-test _executed --save --n-workers 2
	$(BIN)/nbdev-docs --path _executed

clean-venv:
	rm -rf $(VENV)
