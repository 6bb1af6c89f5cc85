# mokit: `make lab` opens the course, `make test` checks it, `make course` runs it all.
# Each target first creates/refreshes .venv; that step is skipped when nothing changed.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# JupyterLab refuses to run as root unless told; a learner's laptop never needs this.
ROOT_FLAG := $(shell [ "$$(id -u)" = 0 ] && echo --allow-root)

.PHONY: setup lab test course student student-lab workshop classroom clean

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
	$(BIN)/python -m pytest -n $(JOBS) --dist loadgroup

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

# During a class: one shared study behind Optuna's gRPC proxy, and optuna-dashboard beside it; it prints the
# address students paste into notebook 07's STORAGE knob. Listens on this machine only; ROOM=1 serves the
# classroom network (anyone on it can read and write the study: no authentication);
# STORAGE=postgresql://user:pw@host/db keeps the study in a database instead of runs/classroom/study.db.
classroom: $(STAMP)
	$(BIN)/python -m mokit.classroom serve $(if $(ROOM),--room) $(if $(STORAGE),--storage $(STORAGE))

clean:
	rm -rf runs student .pytest_cache
