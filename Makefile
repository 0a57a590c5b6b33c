# Two commands for a new user: `make demo` (the main job) and `make test`.
# Each one sets up its own virtual environment on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DATA   ?= digits
# runs/demo for the default data, else runs/<data name> (as `anytime-edge demo` does), so `make demo DATA=x`
# never replaces the demo's run
OUT    ?= $(if $(filter digits,$(DATA)),runs/demo,runs/$(basename $(notdir $(patsubst %/,%,$(DATA)))))

# Where torch's CPU build comes from when the usual index (or a local wheel) lacks it; used for torch alone.
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu

.PHONY: demo test lint format install torch-cpu bench clean

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "make needs Python 3.11+ for the pinned set in constraints.txt (this is " + sys.version.split()[0] + "); run make PYTHON=python3.11, or pip install . for the runtime alone")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(MAKE) --no-print-directory torch-cpu
	$(BIN)/pip install --quiet -c constraints.txt -e '.[all]'
	touch $(STAMP)

# torch first, alone and without its dependencies (the next step takes those from the usual index), at the
# build constraints.txt pins: from the usual index or a local wheel if it is there, else from TORCH_INDEX.
torch-cpu:
	@$(BIN)/pip install --quiet --no-deps -c constraints.txt torch 2>/dev/null || { \
	  echo "torch's CPU build is not on the usual index; installing it from $(TORCH_INDEX)"; \
	  $(BIN)/pip install --quiet --no-deps -c constraints.txt --index-url $(TORCH_INDEX) torch; }

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/anytime-edge demo --data $(DATA) --out $(OUT)

test: lint
	$(BIN)/python -m pytest -q

# Lint, type check and format check (ruff and mypy: the dev extra, pinned in constraints.txt; settings in
# pyproject.toml). A format or import-order finding is fixed by `make format`.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/ruff check --select I .
	$(BIN)/ruff format --check .

# Rewrite the tree in the house style: ruff's safe fixes (import order, unused noqa/imports), then ruff
# format (layout only). What is left for a person to fix is listed, and `make lint` fails on it.
format: $(STAMP)
	$(BIN)/ruff check --fix --extend-select I --exit-zero .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) runs build *.egg-info

# Every benchmark, one after another, on the demo's bundle; JSON lands in runs/bench/ (about an hour).
BENCH := runs/bench
bench: $(STAMP)
	test -f $(OUT)/report.json || $(MAKE) demo
	mkdir -p $(BENCH)
	$(BIN)/python benchmarks/runtime_overhead.py --json $(BENCH)/runtime_overhead.json
	$(BIN)/python benchmarks/deadline.py --json $(BENCH)/deadline.json
	$(BIN)/python benchmarks/footprint.py --json $(BENCH)/footprint.json
	$(BIN)/python benchmarks/profile_accuracy.py --json $(BENCH)/profile_accuracy.json
	$(BIN)/python benchmarks/serve_load.py --json $(BENCH)/serve_load.json
	$(BIN)/python benchmarks/export_cost.py --json $(BENCH)/export_cost.json
	$(BIN)/python benchmarks/noisy_teacher.py --json $(BENCH)/noisy_teacher.json
	$(BIN)/python benchmarks/sparsity_allocation.py --json $(BENCH)/sparsity_allocation.json
	$(BIN)/python benchmarks/sparse_double_descent.py --json $(BENCH)/sparse_double_descent.json
	$(BIN)/python benchmarks/lowrank_dynamics.py --json $(BENCH)/lowrank_dynamics.json
	$(BIN)/python benchmarks/lowrank_students.py --json $(BENCH)/lowrank_students.json
	$(BIN)/python benchmarks/anytime_curve.py --json $(BENCH)/anytime_curve.json
