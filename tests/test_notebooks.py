"""Every notebook runs through papermill with SMOKE=True; its recorded numbers are held to bands.

Bands live in notebooks/bands/<notebook>.json: "smoke" always applies, "smoke_real" when the
notebook ran on real data (it records real_data=True), "full" is for default-settings runs
(`make course`).
"""

import time
from pathlib import Path

import papermill as pm
import pytest

from mokit.results import bands_for, check_bands, load_results

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("[0-9][0-9]_*.ipynb"))


@pytest.mark.notebook
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_smoke(path, tmp_path):
    start = time.perf_counter()
    pm.execute_notebook(str(path), str(tmp_path / path.name), parameters={"SMOKE": True},
                        cwd=str(path.parent), kernel_name="python3", progress_bar=False)
    seconds = time.perf_counter() - start
    results = load_results(path.stem)
    assert results, f"{path.name} recorded nothing"
    assert "real_data" in results, f"{path.name} must record real_data (True/False)"
    bands = bands_for(path.stem, results, smoke=True)
    assert bands, f"no bands for {path.stem} in notebooks/bands/"
    problems = check_bands(results, bands)
    assert not problems, f"{path.name} ({seconds:.0f} s): " + "; ".join(problems)


def test_every_notebook_is_stored_clean():
    import nbformat

    assert NOTEBOOKS, "no notebooks found"
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        assert not any(c.get("outputs") for c in nb.cells if c.cell_type == "code"), f"{path.name} has outputs"
        tags = [c.metadata.get("tags", []) for c in nb.cells if c.cell_type == "code"]
        assert tags and "parameters" in tags[0], f"{path.name}: first code cell must be tagged 'parameters'"
