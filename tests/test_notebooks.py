"""Every notebook runs through papermill with SMOKE=True, once per dataset; its numbers are held to bands.

Notebooks 01-10 take `DATASET` and run with each of mnist, fashion_mnist and cifar10 (stand-ins where
the data is absent); 00 takes `DATASETS` and runs once. Bands live in notebooks/bands/<notebook>.json:
"smoke" always applies, "smoke_real" when the notebook ran on real data (it records real_data=True),
"smoke_<dataset>" / "smoke_real_<dataset>" for the dataset it recorded, "full" is for default-settings
runs (`make course`).
"""

import re
from pathlib import Path

import nbformat
import papermill as pm
import pytest
from nbrun import run_notebook

from mokit.data import list_datasets
from mokit.files import course_notebooks
from mokit.results import bands_for, check_bands, load_results, results_path

NOTEBOOKS = course_notebooks(Path(__file__).resolve().parent.parent / "notebooks")
NO_DATASET_KNOB = {"00_setup_and_baselines"}          # takes DATASETS (a list), runs once
# Notebooks that start a Ray: their runs go to one xdist worker (`--dist loadgroup` in make test), so two
# Ray starts never compete for the cores (a Ray node that cannot register within its fixed 30 s fails)
STARTS_RAY = {"09b_search_at_scale"}
# One smoke run of 07 joins a class study (a SQLite file; the gRPC proxy is tested in test_classroom.py)
CLASS_STUDY = ("07_hyperparameter_search", "fashion_mnist")
CASES = [pytest.param(p, d, marks=[pytest.mark.xdist_group("ray")] if p.stem in STARTS_RAY else [],
                      id=f"{p.stem}-{d}" if d else p.stem)
         for p in NOTEBOOKS for d in ([None] if p.stem in NO_DATASET_KNOB else list_datasets())]


def _parameters(path: Path) -> str:
    code = [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]
    return code[0].source if code else ""


def _run(path: Path, out: Path, **parameters) -> float:
    return run_notebook(path, out, **parameters)


@pytest.mark.notebook
@pytest.mark.parametrize("path, dataset", CASES)
def test_notebook_smoke(path, dataset, tmp_path):
    results_path(path.stem).unlink(missing_ok=True)        # record() merges: start from nothing
    parameters = {"SMOKE": True} | ({"DATASET": dataset} if dataset else {})
    storage = f"sqlite:///{tmp_path / 'class.db'}"
    if (path.stem, dataset) == CLASS_STUDY:
        parameters |= {"STORAGE": storage, "STUDENT": "Smoke Test"}
    seconds = _run(path, tmp_path / path.name, **parameters)
    if (path.stem, dataset) == CLASS_STUDY:                # the notebook's trials are in the class study
        import optuna

        from mokit import classroom
        trials = optuna.load_study(study_name=classroom.STUDY, storage=storage).trials
        assert [t.user_attrs.get("student") for t in trials] == ["Smoke Test"] * 2, trials    # CLASS_TRIALS
        assert {row["student"] for row in classroom.leaderboard(storage, top=100)} <= {"Smoke Test"}
    results = load_results(path.stem)
    assert results, f"{path.name} recorded nothing"
    assert "real_data" in results, f"{path.name} must record real_data (True/False)"
    if dataset:
        assert results.get("dataset") == dataset, f"{path.name} must record dataset={dataset!r}"
    bands = bands_for(path.stem, results, smoke=True)
    assert bands, f"no bands for {path.stem} in notebooks/bands/"
    problems = check_bands(results, bands)
    assert not problems, f"{path.name} on {dataset or 'its datasets'} ({seconds:.0f} s): " + "; ".join(problems)


@pytest.mark.notebook
@pytest.mark.parametrize("path", [p for p in NOTEBOOKS if p.stem not in NO_DATASET_KNOB],
                         ids=[p.stem for p in NOTEBOOKS if p.stem not in NO_DATASET_KNOB])
def test_unknown_dataset_is_a_clear_error_before_any_work(path, tmp_path):
    results_path(path.stem).unlink(missing_ok=True)
    with pytest.raises(pm.PapermillExecutionError) as err:
        _run(path, tmp_path / path.name, SMOKE=True, DATASET="imagenet")
    assert err.value.ename == "ValueError", err.value
    assert "'imagenet'" in err.value.evalue and all(d in err.value.evalue for d in list_datasets()), err.value.evalue
    assert err.value.exec_count <= 5, f"{path.name} did work before checking DATASET (cell {err.value.exec_count})"
    assert not results_path(path.stem).exists(), f"{path.name} recorded numbers for an unknown dataset"


def test_every_notebook_is_stored_clean():
    assert NOTEBOOKS, "no notebooks found"
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        assert not any(c.get("outputs") for c in nb.cells if c.cell_type == "code"), f"{path.name} has outputs"
        tags = [c.metadata.get("tags", []) for c in nb.cells if c.cell_type == "code"]
        assert tags and "parameters" in tags[0], f"{path.name}: first code cell must be tagged 'parameters'"


def test_every_notebook_has_its_dataset_knob():
    for path in NOTEBOOKS:
        knob = "DATASETS" if path.stem in NO_DATASET_KNOB else "DATASET"
        assert re.search(rf"^{knob}\s*=", _parameters(path), re.M), f"{path.name}: no {knob} in its parameters cell"
