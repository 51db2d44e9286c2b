# Two commands for a fresh machine: `make demo` and `make test`.
# Both create .venv (python3 -m venv) when it is missing and install the project
# with its dev extras; the install is redone only when pyproject.toml changes.

PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed

.PHONY: demo test setup sync-check nbtest pytest clean-venv

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev]"
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m vitartifacts.demo

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

pytest: $(STAMP)
	$(BIN)/python -m pytest -q tests/

test: sync-check nbtest pytest

clean-venv:
	rm -rf $(VENV)
