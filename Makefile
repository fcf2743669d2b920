# Two commands for a fresh machine with python3 and make:
#   make demo   set up and run the demo (examples/demo)
#   make test   set up and run the whole test suite (and the linter), on the
#               newest and the oldest Gunicorn we support. The examples' tests
#               need Debian's redis-server (they skip, saying so, without it)
#               and run with the newest Gunicorn only. It ends with 1,000 seeds
#               of the deterministic simulation (docs/development.md).
#   make test-workloads   the matrix of real workloads (tests/workloads, docs/workloads.md):
#               RQ, Celery, django-q2, APScheduler, Socket.IO and an exec'd node
#               as companions against Debian's redis-server; about 6 to 10 minutes.
#   make simulate SEEDS=N   N seeds of the simulation; SEED=s replays one
#                           (KEEP=i,j,... only those events of its schedule)
#   make bench-fleet   fleet singletons' failover, overlap and lease traffic on real
#               PostgreSQL and Redis (benchmarks/fleet.py, docs/fleet-postgresql.md)
#   make chaos  a chaos soak: random faults against a real server for
#               MINUTES (2; fractions allowed), SEED=S repeats a run's faults
#               (docs/development.md, "Chaos soak")
PYTHON ?= python3
VENV ?= .venv
VENV_OLDEST ?= .venv-gunicorn23
VENV_BENCH ?= .venv-bench
GUNICORN_OLDEST ?= 23.0.0
PYTEST_ARGS ?=
SEEDS ?= 1000
SEED ?=
KEEP ?=
MINUTES ?= 2

.PHONY: demo test test-newest test-oldest test-workloads test-matrix lint simulate chaos bench bench-quick bench-fleet clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q -e '.[test,examples,workloads,postgresql]'
	touch $@

$(VENV_OLDEST)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV_OLDEST)
	$(VENV_OLDEST)/bin/python -m pip install -q --upgrade pip
	$(VENV_OLDEST)/bin/python -m pip install -q -e '.[test,redis,postgresql]' 'gunicorn==$(GUNICORN_OLDEST)'
	touch $@

$(VENV_BENCH)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV_BENCH)
	$(VENV_BENCH)/bin/python -m pip install -q --upgrade pip
	$(VENV_BENCH)/bin/python -m pip install -q -e '.[bench]'
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/gunicorn-companion serve -c examples/demo/gunicorn.conf.py

test: lint test-newest test-oldest simulate

test-newest: $(VENV)/.installed
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

test-oldest: $(VENV_OLDEST)/.installed
	$(VENV_OLDEST)/bin/python -m pytest $(PYTEST_ARGS)

# Not part of `test`: collected only when named (norecursedirs in pyproject.toml).
test-workloads: $(VENV)/.installed
	$(VENV)/bin/python -m pytest tests/workloads $(PYTEST_ARGS)

# The suite on each of Python 3.10 to 3.13 found here (pyenv's too), with
# the oldest Gunicorn and the newest 27.x; says which Pythons it skipped.
# MATRIX_PYTHONS="3.10 3.13" picks some.
MATRIX_PYTHONS ?= 3.10 3.11 3.12 3.13
test-matrix:
	GUNICORN_OLDEST=$(GUNICORN_OLDEST) PYTEST_ARGS="$(PYTEST_ARGS)" .ci/test-matrix $(MATRIX_PYTHONS)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check src tests examples benchmarks docs chaos

chaos: $(VENV)/.installed
	$(VENV)/bin/python chaos/soak.py --minutes $(MINUTES) $(if $(SEED),--seed $(SEED))

simulate: $(VENV)/.installed
	$(VENV)/bin/python tests/simulation.py $(if $(SEED),--seed $(SEED) $(if $(KEEP),--keep $(KEEP)),--seeds $(SEEDS))
	$(VENV)/bin/python tests/fleet_simulation.py $(if $(SEED),--seed $(SEED),--seeds $(SEEDS))

# Companions against supervisord and circus (benchmarks/README.md).
bench: $(VENV_BENCH)/.installed
	$(VENV_BENCH)/bin/python benchmarks/run.py

bench-quick: $(VENV_BENCH)/.installed
	$(VENV_BENCH)/bin/python benchmarks/run.py --quick

# Fleet singletons: failover p50/p99 per fault, overlap and renewal traffic on
# real PostgreSQL and Redis (benchmarks/fleet.py; about 10 minutes). It reuses
# the tests' helpers, so it runs in the test venv.
bench-fleet: $(VENV)/.installed
	$(VENV)/bin/python benchmarks/fleet.py

clean:
	rm -rf $(VENV) $(VENV_OLDEST) $(VENV_BENCH) .venv-matrix .pytest_cache .hypothesis
