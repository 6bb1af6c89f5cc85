# mokit: `make lab` opens the course, `make test` checks it, `make course` runs it all.
# Each target first creates/refreshes .venv; that step is skipped when nothing changed.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# JupyterLab refuses to run as root unless told; a learner's laptop never needs this.
ROOT_FLAG := $(shell [ "$$(id -u)" = 0 ] && echo --allow-root)

.PHONY: setup lab test course student student-lab workshop clean

setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	@touch $(STAMP)

lab: $(STAMP)
	$(BIN)/jupyter lab $(ROOT_FLAG) notebooks/

# Tests run in parallel, one worker per core (pytest-xdist); JOBS=1 runs them in one process.
JOBS ?= auto

test: $(STAMP)
	$(BIN)/ruff check mokit tests benchmarks
	$(BIN)/mypy
	$(BIN)/python -m pytest -n $(JOBS)

course: $(STAMP)
	$(BIN)/python -m mokit.course

student: $(STAMP)
	$(BIN)/python -m mokit.student

# The learner's entry point: fresh student copies, and JupyterLab opened on them (not on the solutions).
student-lab: student
	$(BIN)/jupyter lab $(ROOT_FLAG) student/

# Before a class: decode the data, train and cache every baseline, write the student copies.
# DATASETS="fashion_mnist cifar10" also warms the LeNets for those values of the DATASET knob.
workshop: $(STAMP)
	$(BIN)/python -m mokit.workshop $(if $(DATASETS),--datasets $(DATASETS))

clean:
	rm -rf runs student .pytest_cache
