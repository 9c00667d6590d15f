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

# Peers (PyHessian, hessian-eigenthings, loss-landscapes) for `make bench`, in their own venv as in
# shared/peers.md §3.1: never in the project venv. bench_hessian runs with this venv's python (the
# workbench core only needs torch, numpy, pandas); bench_probes imports loss-landscapes from its
# site-packages. The same constraints keep torch the local CPU build.
PEERS_VENV  ?= .venv-peers
PEERS_STAMP  = $(PEERS_VENV)/.peers-installed
PEERS        = pyhessian==0.1 hessian-eigenthings==1.0.0a5 loss-landscapes==3.0.6

NOTEBOOKS = $(wildcard notebooks/*.ipynb)
BENCHES   = $(wildcard benchmarks/bench_*.py)
ROOT_FLAG = $(if $(filter 0,$(shell id -u)),--allow-root,)

.PHONY: venv test test-py test-notebooks notebooks serve lab bench bench-peers lint clean distclean help

help:
	@echo "make venv | test | serve [PORT=5006] | lab | notebooks | bench | lint | clean | distclean"

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

# Re-execute the notebooks in place (their stored outputs are what test-notebooks compares), one
# kernel at a time, then sync each paired py:percent file. Each notebook pins its own threads, seeds
# and (on x86) AVX2 CPU kernels in its first cell, so any x86 Linux machine stores the same numbers.
# One notebook: make notebooks NOTEBOOKS=notebooks/04_curse_of_depth.ipynb
notebooks: venv
	$(TEST_ENV) $(BIN)/jupyter nbconvert --to notebook --execute --inplace \
		--ExecutePreprocessor.timeout=900 $(NOTEBOOKS)
	$(BIN)/jupytext --quiet --sync $(NOTEBOOKS)

serve: venv
	$(BIN)/panel serve apps/*.py --address 127.0.0.1 --port $(PORT) \
		--allow-websocket-origin 127.0.0.1:$(PORT) --allow-websocket-origin localhost:$(PORT) \
		--check-unused-sessions 1000 --unused-session-lifetime 1000

lab: venv
	$(BIN)/jupyter lab --no-browser --ip 127.0.0.1 $(ROOT_FLAG)

$(PEERS_STAMP): constraints.txt
	$(PYTHON) -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/pip install -q -c constraints.txt torch numpy pandas scipy tqdm $(PEERS)
	touch $@

bench-peers: $(PEERS_STAMP)

# Each benchmark prints its ratios against the peers measured in the same run.
bench: venv $(PEERS_STAMP)
ifneq ($(BENCHES),)
	set -e; for b in $(BENCHES); do echo "== $$b"; \
		if [ "$$b" = benchmarks/bench_hessian.py ]; then \
			PYTHONPATH=. $(PEERS_VENV)/bin/python $$b; \
		else NORMLAB_PEER_SITE=$$($(PEERS_VENV)/bin/python -c \
			'import sysconfig; print(sysconfig.get_paths()["purelib"])') $(BIN)/python $$b; fi; done
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
	rm -rf $(VENV) $(PEERS_VENV)
