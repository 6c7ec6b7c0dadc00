# Two commands do everything on a fresh machine:
#   make demo   set up, then run the embedded pipeline on the synthetic corpus
#   make test   set up, then run the CPU test suite
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_DIR ?= demo_out
PYTEST_WORKERS ?= 2

.PHONY: setup demo test test-slow bench clean

setup:
	@bash scripts/setup_env.sh

demo: setup
	$(PY) -m spiritlm.recipes.demo --preset full --out $(DEMO_DIR)

test: setup
	$(PY) -m pytest -n $(PYTEST_WORKERS) --durations=15 tests

test-slow: setup
	$(PY) -m pytest -n $(PYTEST_WORKERS) -m slow --durations=15 tests

clean:
	rm -rf $(DEMO_DIR) build *.egg-info
