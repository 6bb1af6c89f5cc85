"""Run every notebook at its default settings: `make course` (or `python -m mokit.course [00 02 ...]`).

Executed copies go to <runs>/course/, each notebook's recorded numbers to <runs>/results/, and
the run times to <runs>/results/course.json. Each notebook's numbers are checked against the
"full" bands in notebooks/bands/; the exit status is non-zero when a notebook fails or a number
falls outside its band (each one is named).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .data import atomic_write_bytes, runs_root
from .results import check_bands, load_bands, load_results

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"


def notebooks(prefixes: list[str] | None = None) -> list[Path]:
    """The course notebooks in order, optionally only those whose names start with `prefixes`."""
    found = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
    if prefixes:
        found = [p for p in found if any(p.stem.startswith(x) for x in prefixes)]
        if not found:
            raise SystemExit(f"no notebook matches {prefixes}; notebooks: {[p.stem for p in sorted(NOTEBOOK_DIR.glob('[0-9][0-9]_*.ipynb'))]}")
    return found


def run_course(paths: list[Path], parameters: dict | None = None) -> list[dict]:
    """Execute each notebook with papermill; return one status row per notebook."""
    import papermill as pm

    out_dir = runs_root() / "course"
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for path in paths:
        print(f"=== {path.stem}", flush=True)
        start, error = time.perf_counter(), None
        try:
            pm.execute_notebook(str(path), str(out_dir / path.name), parameters=parameters or {},
                                cwd=str(path.parent), kernel_name="python3", progress_bar=True)
        except Exception as e:  # noqa: BLE001 - reported per notebook, the course goes on
            error = f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}"
        seconds = time.perf_counter() - start
        problems = [] if error else check_bands(load_results(path.stem), load_bands(path.stem, "full"))
        rows.append({"notebook": path.stem, "seconds": round(seconds, 1),
                     "status": "error" if error else ("outside band" if problems else "ok"),
                     "problems": [error] if error else problems})
        print(f"    {rows[-1]['status']} in {seconds:.0f} s" + "".join(f"\n    - {p}" for p in rows[-1]["problems"]))
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("only", nargs="*", help="notebook name prefixes, e.g. 00 02")
    args = ap.parse_args(argv)
    rows = run_course(notebooks(args.only))
    atomic_write_bytes(runs_root() / "results" / "course.json", json.dumps(rows, indent=2).encode())
    from .metrics import Table
    print(Table({k: v for k, v in r.items() if k != "problems"} for r in rows))
    bad = [r for r in rows if r["status"] != "ok"]
    print(f"{len(rows) - len(bad)} of {len(rows)} notebooks ok; results in {runs_root() / 'results'}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
