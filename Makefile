# Two commands for a new user: `make demo` (the main job) and `make test`.
# Each one sets up its own virtual environment on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DATA   ?= digits
OUT    ?= runs/demo

.PHONY: demo test install bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[all]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/anytime-edge demo --data $(DATA) --out $(OUT)

test: $(STAMP)
	$(BIN)/python -m pytest -q

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
