# Two commands for a fresh machine with python3 and make:
#   make demo   set up and run the demo (examples/demo)
#   make test   set up and run the whole test suite (and the linter), on the
#               newest and the oldest Gunicorn we support. The examples' tests
#               need Debian's redis-server (they skip, saying so, without it)
#               and run with the newest Gunicorn only.
#   make chaos  a chaos soak: random faults against a real server for
#               MINUTES (2; fractions allowed), SEED=S repeats a run's faults
#               (docs/development.md, "Chaos soak")
PYTHON ?= python3
VENV ?= .venv
VENV_OLDEST ?= .venv-gunicorn23
VENV_BENCH ?= .venv-bench
GUNICORN_OLDEST ?= 23.0.0
PYTEST_ARGS ?=
MINUTES ?= 2
SEED ?=

.PHONY: demo test test-newest test-oldest lint chaos bench bench-quick clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q -e '.[test,examples]'
	touch $@

$(VENV_OLDEST)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV_OLDEST)
	$(VENV_OLDEST)/bin/python -m pip install -q --upgrade pip
	$(VENV_OLDEST)/bin/python -m pip install -q -e '.[test]' 'gunicorn==$(GUNICORN_OLDEST)'
	touch $@

$(VENV_BENCH)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV_BENCH)
	$(VENV_BENCH)/bin/python -m pip install -q --upgrade pip
	$(VENV_BENCH)/bin/python -m pip install -q -e '.[bench]'
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/gunicorn-companion serve -c examples/demo/gunicorn.conf.py

test: lint test-newest test-oldest

test-newest: $(VENV)/.installed
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

test-oldest: $(VENV_OLDEST)/.installed
	$(VENV_OLDEST)/bin/python -m pytest $(PYTEST_ARGS)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check src tests examples benchmarks docs chaos

chaos: $(VENV)/.installed
	$(VENV)/bin/python chaos/soak.py --minutes $(MINUTES) $(if $(SEED),--seed $(SEED))

# Companions against supervisord and circus (benchmarks/README.md).
bench: $(VENV_BENCH)/.installed
	$(VENV_BENCH)/bin/python benchmarks/run.py

bench-quick: $(VENV_BENCH)/.installed
	$(VENV_BENCH)/bin/python benchmarks/run.py --quick

clean:
	rm -rf $(VENV) $(VENV_OLDEST) $(VENV_BENCH) .pytest_cache .hypothesis
