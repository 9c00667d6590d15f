# Normlab developer entry points. `make test` works from a fresh clone: it builds .venv first.
#
# The venv is rebuilt (pip install into it) whenever pyproject.toml or constraints.txt is newer
# than the stamp file. constraints.txt pins torch to the local CPU wheel; never install torch
# without it (an unpinned resolve pulls the CUDA build and ~5 GB of nvidia-* wheels).

PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.normlab-installed
EXTRAS ?= dev,e2e,dask
PORT   ?= 5006

# Tests: one torch thread per process. The machine has 2 cores and the app tests run a training
# thread beside a server (and Chromium); tiny models gain nothing from intra-op threads.
# Notebooks pin their own threads (see shared/environment-notes.md), so stored outputs still match.
THREADS ?= 1
TEST_ENV = OMP_NUM_THREADS=$(THREADS) MKL_NUM_THREADS=$(THREADS) OPENBLAS_NUM_THREADS=$(THREADS)
PYTEST_ARGS ?= -q

NOTEBOOKS = $(wildcard notebooks/*.ipynb)
BENCHES   = $(wildcard benchmarks/bench_*.py)
ROOT_FLAG = $(if $(filter 0,$(shell id -u)),--allow-root,)

.PHONY: venv test test-py test-notebooks serve lab bench lint clean distclean help

help:
	@echo "make venv | test | serve [PORT=5006] | lab | bench | lint | clean | distclean"

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -c constraints.txt -e '.[$(EXTRAS)]'
	touch $@

test: test-py test-notebooks

test-py: venv
	$(TEST_ENV) $(BIN)/python -m pytest $(PYTEST_ARGS) tests

test-notebooks: venv
ifneq ($(NOTEBOOKS),)
	$(TEST_ENV) $(BIN)/python -m pytest $(PYTEST_ARGS) --nbval-lax --nbval-current-env \
		-p no:cacheprovider notebooks
else
	@echo "no notebooks/*.ipynb: nothing to check with nbval"
endif

serve: venv
	$(BIN)/panel serve apps/*.py --address 127.0.0.1 --port $(PORT) \
		--allow-websocket-origin 127.0.0.1:$(PORT) --allow-websocket-origin localhost:$(PORT) \
		--check-unused-sessions 1000 --unused-session-lifetime 1000

lab: venv
	$(BIN)/jupyter lab --no-browser --ip 127.0.0.1 $(ROOT_FLAG)

bench: venv
ifneq ($(BENCHES),)
	set -e; for b in $(BENCHES); do echo "== $$b"; $(BIN)/python $$b; done
else
	@echo "no benchmarks/bench_*.py yet"
endif

lint: venv
	$(BIN)/ruff check workbench apps tests benchmarks

# Caches and build litter; keeps .venv (a rebuild takes about a minute). distclean drops it too.
clean:
	rm -rf .pytest_cache .ruff_cache build dist *.egg-info screenshots
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
	find . -path ./$(VENV) -prune -o -name .ipynb_checkpoints -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
