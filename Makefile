# promptserve: `make test` and `make serve` set everything up themselves.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SOURCES := $(wildcard models training service client tests bench docs/*.py)

.PHONY: setup test test-quick test-image mutation lint format docs serve clean

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
	mkdir -p $(TYPECHECK) && for d in models training service client; do ln -sfn ../../$$d $(TYPECHECK)/$$d; done
	$(BIN)/ruff check $(SOURCES)
	$(BIN)/ruff format --check $(SOURCES)
	$(BIN)/mypy

format: setup
	$(BIN)/ruff format $(SOURCES)
	$(BIN)/ruff check --fix $(SOURCES)

# The suite runs on TEST_WORKERS processes (pytest-xdist; default: the cores, at most 4), each
# module on one worker, so a module's server starts once; TEST_WORKERS=0 runs it in this process.
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 2); [ $$n -gt 4 ] && n=4; echo $$n)
PARALLEL := $(if $(filter 0,$(TEST_WORKERS)),-p no:xdist,-n $(TEST_WORKERS) --dist loadscope)

test: setup lint docs
	$(BIN)/python -m pytest -q $(PARALLEL)

# The docs site (mkdocs.yml, docs/): the generated reference pages must match the code, and
# the strict build fails on a broken link, a missing page or a page left out of the nav.
docs: setup
	$(BIN)/python docs/gen_reference.py --check
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet --site-dir .site

# The quick local loop: everything in process; not the slow tests (every test that starts a real
# server process, the jobs, the docs' examples, real learning) nor the image. make test runs them.
test-quick: setup
	$(BIN)/python -m pytest -q $(PARALLEL) -m "not slow and not docker"

# The image built from the Dockerfile and run with compose (tests/deploy). Without a Docker
# daemon it says so loudly and exits 0; .ci/run installs and starts one.
test-image: setup
	@if $(BIN)/python -c "import sys; from tests.deploy.docker import daemon_answers as d; sys.exit(not d())"; then \
		$(BIN)/python -m pytest -q -m docker -o log_cli=true -o log_cli_level=WARNING tests/deploy; \
	else \
		echo "********************************************************************" >&2; \
		echo "*** make test-image SKIPPED: no Docker daemon answers.            ***" >&2; \
		echo "*** The image was NOT built or run. Start dockerd and rerun.     ***" >&2; \
		echo "********************************************************************" >&2; \
	fi

# Mutation testing (mutmut) of admission, the batcher, the store, the job runner, leases and
# label checks against their fast tests, within MUTATION_BUDGET_S seconds (default 1800);
# MUTATION_GROUPS="jobs leases" runs some groups only. Writes .mutation/report.md (the
# surviving mutants). Not part of make test. See docs/development/tests.md.
mutation: setup
	$(BIN)/python bench/mutation.py $(if $(MUTATION_GROUPS),--only $(MUTATION_GROUPS))

# Serves ./store on 127.0.0.1:8000; the first start creates the default zero-shot classifier.
serve: setup
	$(BIN)/promptserve serve --host 127.0.0.1 --port 8000

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .typecheck .site .mutation
