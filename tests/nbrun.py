"""Run a notebook through papermill the way every notebook test does (test_notebooks, test_student)."""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import papermill as pm
from nbclient.exceptions import CellTimeoutError

from mokit.results import results_path

CELL_TIMEOUT = 300     # seconds; the slowest SMOKE cell takes well under a minute on 2 cores


def run_notebook(path: Path, out: Path, *, cwd: Path | None = None, **parameters) -> float:
    """Execute the notebook; a cell that gets no reply within CELL_TIMEOUT is retried once with a new
    kernel. Seen twice: the kernel had finished a widget cell (a live panel) and sat idle while the
    client still waited for its reply (a lost ZMQ message, not a slow cell: the notebooks pass alone
    in under a minute). A notebook that hangs twice fails. Returns the seconds it took."""
    start = time.perf_counter()
    for attempt in (1, 2):
        try:
            pm.execute_notebook(str(path), str(out), parameters=parameters, cwd=str(cwd or path.parent),
                                kernel_name="python3", progress_bar=False, execution_timeout=CELL_TIMEOUT)
            break
        except CellTimeoutError:
            if attempt == 2:
                raise
            warnings.warn(f"{path.name}: a cell got no reply in {CELL_TIMEOUT} s; running it again", stacklevel=1)
            results_path(path.stem).unlink(missing_ok=True)
    return time.perf_counter() - start
