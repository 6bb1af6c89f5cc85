"""Run every notebook at its default settings: `make course` (or `python -m mokit.course [00 02 ...]`).

Executed copies go to <runs>/course/, each notebook's recorded numbers to <runs>/results/, the run
times to <runs>/course/course.json and a self-contained HTML report (numbers against bands and the
papers' figures, time, device, data, plots) to <runs>/course/report.html. Each notebook's numbers are
checked against the "full" bands in notebooks/bands/ ("smoke" ones with `-p SMOKE=true`); the exit
status is non-zero when a notebook fails or a number falls outside its band (each one is named).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .data import atomic_write_bytes, runs_root
from .files import course_notebooks
from .report import write_report
from .results import bands_for, check_bands, load_bands, load_results, results_path

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"

# Appended to each run: which device torch really used (CUDA memory allocated in the kernel).
PROBE_TAG = "mokit-course-probe"
PROBE = """import sys
_torch = sys.modules.get("torch")
_cuda = _torch is not None and _torch.cuda.is_initialized() and _torch.cuda.max_memory_allocated() > 0
print("mokit-course device:", "cuda" if _cuda else "cpu")"""


def notebooks(prefixes: list[str] | None = None, folder: Path = NOTEBOOK_DIR) -> list[Path]:
    """The course notebooks in order, optionally only those whose names start with `prefixes`."""
    found = course_notebooks(folder)
    if prefixes:
        names = [p.stem for p in found]
        found = [p for p in found if any(p.stem.startswith(x) for x in prefixes)]
        if not found:
            raise SystemExit(f"no notebook matches {prefixes}; notebooks in {folder}: {names}")
    return found


def execute(path: Path, out: Path, parameters: dict) -> tuple[str | None, str]:
    """Run one notebook with papermill (plus the device probe): (error or None, device used)."""
    import nbformat
    import papermill as pm

    nb = nbformat.read(path, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(PROBE, metadata={"tags": [PROBE_TAG]}))
    error = None
    out.unlink(missing_ok=True)
    try:
        pm.execute_notebook(nb, str(out), parameters=parameters, cwd=str(path.parent),
                            kernel_name="python3", progress_bar=True)
    except Exception as e:  # reported per notebook, the course goes on
        error = f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}"
    executed = nbformat.read(out, as_version=4) if out.exists() else None
    probe = [c for c in (executed.cells if executed else []) if PROBE_TAG in c.metadata.get("tags", [])]
    text = "".join(o.get("text", "") for c in probe for o in c.get("outputs", []))
    device = text.split("mokit-course device:")[-1].strip() if "mokit-course device:" in text else "unknown"
    return error, device


def run_course(paths: list[Path], parameters: dict | None = None, bands_dir: Path | None = None) -> list[dict]:
    """Execute each notebook; return one row per notebook (status, time, device, data, numbers, bands)."""
    parameters = parameters or {}
    out_dir = runs_root() / "course"
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for path in paths:
        print(f"=== {path.stem}", flush=True)
        results_path(path.stem).unlink(missing_ok=True)   # numbers from an earlier run must not pass as this run's
        start = time.perf_counter()
        error, device = execute(path, out_dir / path.name, parameters)
        seconds = time.perf_counter() - start
        results = load_results(path.stem)
        folder = bands_dir or path.parent / "bands"
        bands = bands_for(path.stem, results, smoke=bool(parameters.get("SMOKE")), folder=folder)
        problems = [error] if error else check_bands(results, bands)
        rows.append({"notebook": path.stem, "seconds": round(seconds, 1),
                     "status": "error" if error else ("outside band" if problems else "ok"),
                     "device": device,
                     "data": {True: "real", False: "stand-in"}.get(bool(results["real_data"]), "unknown")
                     if isinstance(results.get("real_data"), bool) else "unknown",
                     "problems": problems, "results": results, "bands": bands,
                     "references": load_bands(path.stem, "references", folder), "executed": str(out_dir / path.name)})
        print(f"    {rows[-1]['status']} in {seconds:.0f} s" + "".join(f"\n    - {p}" for p in problems))
    return rows


def parse_parameter(text: str) -> tuple[str, object]:
    """'SMOKE=true' -> ('SMOKE', True): the value is read as JSON, else kept as a string."""
    name, sep, value = text.partition("=")
    if not sep or not name.isidentifier():
        raise argparse.ArgumentTypeError(f"parameter must look like NAME=VALUE, got {text!r}")
    try:
        return name, json.loads(value)
    except json.JSONDecodeError:
        return name, value


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("only", nargs="*", help="notebook name prefixes, e.g. 00 02")
    ap.add_argument("--notebooks", type=Path, default=NOTEBOOK_DIR, help="folder of NN_name.ipynb notebooks")
    ap.add_argument("--bands", type=Path, default=None,
                    help="folder of NN_name.json bands (default: <notebooks>/bands)")
    ap.add_argument("-p", "--parameter", type=parse_parameter, action="append", default=[], metavar="NAME=VALUE",
                    help="papermill parameter, e.g. -p SMOKE=true (then the smoke bands apply)")
    args = ap.parse_args(argv)
    rows = run_course(notebooks(args.only, args.notebooks), dict(args.parameter), args.bands)
    summary = [{k: r[k] for k in ("notebook", "seconds", "status", "device", "data", "problems")} for r in rows]
    atomic_write_bytes(runs_root() / "course" / "course.json", json.dumps(summary, indent=2).encode())
    report = write_report(rows, runs_root() / "course" / "report.html")
    from .metrics import Table
    print(Table({k: v for k, v in r.items() if k != "problems"} for r in summary))
    bad = [r for r in rows if r["status"] != "ok"]
    print(f"{len(rows) - len(bad)} of {len(rows)} notebooks ok; results in {runs_root() / 'results'}, report {report}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
