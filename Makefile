# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
NATIVE := $(VENV)/.compiled

.PHONY: demo test test-slow lint unit faults bench bench-quick clean

$(STAMP): pyproject.toml setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The per-event hot path compiled to C with mypyc (see setup.py), in place next to the
# sources; rebuilt whenever a source changes. METERLINE_PURE_PYTHON=1 skips it.
$(NATIVE): $(STAMP) setup.py $(wildcard meterline/*.py meterline/*/*.py mediation/*.py rating/*.py consolidation/*.py schemas/*.py)
	$(BIN)/python setup.py --quiet build_ext --inplace
	touch $(NATIVE)

demo: $(NATIVE)
	$(BIN)/meterline demo --out meterline-out

lint: $(STAMP)
	$(BIN)/ruff check meterline mediation rating consolidation schemas generator invoice_site tests bench setup.py
	$(BIN)/mypy

# Three test processes on two cores: integration tests mostly wait on the broker
# (group joins, commits), so the suite is bound by waiting, not CPU.
test: lint $(NATIVE)
	$(BIN)/pytest -q -n 3

unit: $(NATIVE)
	$(BIN)/pytest -q -m 'not integration and not slow'

# The slow tests outside the fault suite: Chromium (installed with apt-get when absent) for the
# invoice site's PDFs and browser checks, PostgreSQL for the shared store, long property runs.
test-slow: $(NATIVE)
	$(BIN)/pytest -q -m 'slow and not faults' -n 2

# The fault-injection suite (tests/faults), slow parts included; rewrites tests/faults/REPORT.md.
# Events per faulty run (the SIGKILL fault has its own size) and hostile records of the garbage fault.
FAULT_EVENTS ?= 500000
FAULT_KILL_EVENTS ?= 1000000
FAULT_GARBAGE ?= 100000
faults: $(NATIVE)
	METERLINE_FAULT_EVENTS=$(FAULT_EVENTS) METERLINE_FAULT_KILL_EVENTS=$(FAULT_KILL_EVENTS) \
		METERLINE_FAULT_GARBAGE=$(FAULT_GARBAGE) METERLINE_FAULT_REPORT=tests/faults/REPORT.md \
		$(BIN)/pytest -q -m faults tests/faults

bench: $(NATIVE)
	$(BIN)/python -m bench.run --full

bench-quick: $(NATIVE)
	$(BIN)/python -m bench.run --quick

clean:
	rm -rf $(VENV) meterline-out build *.so */*.so */*/*.so
