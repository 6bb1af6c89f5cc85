"""The course report: one self-contained HTML page (no external assets) from `mokit.course`'s rows.

A summary table (status, run time, device, data) for every notebook, then per notebook each recorded
number next to its band and the paper's figure where the bands file names one, numbers outside their
band highlighted, each claim the run chose with its evidence (`results.claim`), and the notebook's
plots embedded as base64 PNGs.
"""

from __future__ import annotations

import json
from html import escape
from pathlib import Path

from .data import atomic_write_bytes
from .results import check_bands, flatten

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.bad td { background: #fde2e2; }
.ok { color: #17712c; font-weight: bold; }
.error, .outside { color: #b00020; font-weight: bold; }
.ref { color: #555; font-size: 0.9em; }
img { max-width: 48%; margin: 0.3em; border: 1px solid #ddd; }
"""


def fmt(value) -> str:
    """A recorded value, short: floats to 4 significant digits, long lists cut."""
    if isinstance(value, float):
        return f"{value:.4g}"
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= 80 else text[:77] + "..."


def notebook_images(executed: str | Path | None) -> list[str]:
    """The base64 PNG outputs of an executed notebook, in cell order ([] if it is missing)."""
    if not executed or not Path(executed).exists():
        return []
    import nbformat

    nb = nbformat.read(executed, as_version=4)
    return [out["data"]["image/png"].replace("\n", "")
            for cell in nb.cells if cell.cell_type == "code"
            for out in cell.get("outputs", []) if "image/png" in out.get("data", {})]


def _numbers_table(row: dict) -> str:
    results = flatten({k: v for k, v in row.get("results", {}).items() if k != "claims"})
    bands, refs = row.get("bands", {}), row.get("references", {})
    lines = ["<tr><th>number</th><th>value</th><th>band</th><th>reference</th></tr>"]
    for name in list(bands) + [k for k in results if k not in bands]:
        bad = name in bands and check_bands(row.get("results", {}), {name: bands[name]})
        value = fmt(results[name]) if name in results else "not recorded"
        band = f"[{fmt(bands[name][0])}, {fmt(bands[name][1])}]" if isinstance(bands.get(name), list) \
            else (fmt(bands[name]) if name in bands else "")
        lines.append(f"<tr{' class=bad' if bad else ''}><td>{escape(name)}</td><td class=num>{escape(value)}</td>"
                     f"<td class=num>{escape(band)}</td><td class=ref>{escape(refs.get(name, ''))}</td></tr>")
    return "<table>" + "".join(lines) + "</table>"


def _claims_table(row: dict) -> str:
    """Each sentence the run chose (results.claim), whether its condition held, and its evidence."""
    claims = row.get("results", {}).get("claims", {})
    if not claims:
        return ""
    lines = ["<tr><th>claim</th><th>the run said</th><th>held</th><th>evidence</th></tr>"]
    for name, c in sorted(claims.items()):
        evidence = ", ".join(f"{k} = {fmt(v)}" for k, v in sorted(c.get("evidence", {}).items()))
        lines.append(f"<tr><td>{escape(name)}</td><td>{escape(str(c.get('text', '')))}</td>"
                     f"<td>{'yes' if c.get('held') else 'no'}</td><td class=ref>{escape(evidence)}</td></tr>")
    return f"<h3>{len(claims)} claims, each chosen by its measurement</h3><table>{''.join(lines)}</table>"


def render(rows: list[dict], title: str = "mokit course report") -> str:
    """The whole report page as one HTML string."""
    head = ("<tr><th>notebook</th><th>status</th><th>time (s)</th><th>device</th><th>data</th>"
            "<th>numbers in band</th><th>problems</th></tr>")
    summary, sections = [head], []
    for row in rows:
        status = row["status"]
        css = {"ok": "ok", "error": "error"}.get(status, "outside")
        n_bands = len(row.get("bands", {}))
        in_band = n_bands - len(check_bands(row.get("results", {}), row.get("bands", {})))
        problems = "<br>".join(escape(p) for p in row.get("problems", []))
        link = f"<a href='#{escape(row['notebook'])}'>{escape(row['notebook'])}</a>"
        summary.append(f"<tr{'' if status == 'ok' else ' class=bad'}><td>{link}</td>"
                       f"<td class={css}>{escape(status)}</td>"
                       f"<td class=num>{row['seconds']:.1f}</td><td>{escape(row.get('device', '?'))}</td>"
                       f"<td>{escape(row.get('data', '?'))}</td><td class=num>{in_band} of {n_bands}</td>"
                       f"<td>{problems}</td></tr>")
        images = "".join(f"<img alt='plot {i + 1} of {escape(row['notebook'])}' src='data:image/png;base64,{b64}'>"
                         for i, b64 in enumerate(row.get("images", [])))
        sections.append(f"<h2 id='{escape(row['notebook'])}'>{escape(row['notebook'])} "
                        f"<span class={css}>{escape(status)}</span></h2>{_numbers_table(row)}{_claims_table(row)}"
                        + (f"<details open><summary>{len(row['images'])} plots</summary>{images}</details>"
                           if images else ""))
    ok = sum(r["status"] == "ok" for r in rows)
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{escape(title)}</title>"
            f"<style>{_CSS}</style></head><body><h1>{escape(title)}</h1>"
            f"<p>{ok} of {len(rows)} notebooks ok. Bands: notebooks/bands/; rows outside their band are red.</p>"
            f"<table>{''.join(summary)}</table>{''.join(sections)}</body></html>")


def write_report(rows: list[dict], path: str | Path) -> Path:
    """Render `rows` (each with the notebook's "images" filled in from its executed copy) to `path`, atomically."""
    rows = [r | {"images": notebook_images(r.get("executed"))} for r in rows]
    return atomic_write_bytes(path, render(rows).encode())
