# promptserve: `make test` and `make serve` set everything up themselves.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SOURCES := $(wildcard models training service tests bench)

.PHONY: setup test lint format serve clean

setup: $(STAMP)

# Re-install only when the project metadata changes; a fresh clone gets a fresh venv.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# mypy reads the packages under their installed names through links (see pyproject.toml)
TYPECHECK := .typecheck/promptserve

lint: setup
	mkdir -p $(TYPECHECK) && for d in models training service; do ln -sfn ../../$$d $(TYPECHECK)/$$d; done
	$(BIN)/ruff check $(SOURCES)
	$(BIN)/ruff format --check $(SOURCES)
	$(BIN)/mypy

format: setup
	$(BIN)/ruff format $(SOURCES)
	$(BIN)/ruff check --fix $(SOURCES)

test: setup lint
	$(BIN)/python -m pytest -q

# Serves ./store on 127.0.0.1:8000; the first start creates the default zero-shot classifier.
serve: setup
	$(BIN)/promptserve serve --host 127.0.0.1 --port 8000

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .typecheck
