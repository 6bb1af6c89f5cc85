"""The prose check: no notebook types in a measurement that its run did not produce.

A measurement is a number with a unit a run measures: a percentage, a ratio (2x, 3×), a time (ms, s,
minutes), accuracy points, decibels or a size (KB, MB, bytes). The check reads every markdown cell and
every code comment (comments are prose too: "about 2 s per epoch" in a knob's comment is a typed
timing). Where a number is not a measurement it is left alone:
- shapes and products (28×28, 3×3 convs, 784 × 300), inline code (`b32-50%`) and LaTeX ($s_t$);
- a citation: the same number and unit stand in that notebook's bands "references" (the paper's
  figure, or the issue's target, written once where the course report shows it beside the result);
- the few entries of ALLOWED below, each with its reason.
Numbers a notebook states about its own run are printed by its code, or chosen by `results.claim`.
"""

from __future__ import annotations

import io
import json
import re
import tokenize
from pathlib import Path

import pytest

from mokit.files import course_notebooks

NOTEBOOKS = course_notebooks(Path(__file__).resolve().parent.parent / "notebooks")

UNITS = {"%": "percent", "percent": "percent", "×": "times", "x": "times", "ms": "ms", "s": "s", "sec": "s",
         "second": "s", "seconds": "s", "min": "min", "minute": "min", "minutes": "min", "point": "points",
         "points": "points", "db": "dB", "kb": "bytes", "mb": "bytes", "gb": "bytes", "bytes": "bytes",
         "kib": "bytes", "mib": "bytes"}
MEASUREMENT = re.compile(r"(?<![\w.\-])(\d+(?:\.\d+)?)\s*(%|×|percent\b|x\b|ms\b|s\b|sec\b|seconds?\b|min\b|"
                         r"minutes?\b|points?\b|dB\b|KB\b|MB\b|GB\b|KiB\b|MiB\b|bytes\b)", re.IGNORECASE)
NOT_PROSE = [re.compile(p) for p in (
    r"`[^`]*`",                                   # inline code: knob names and values, labels
    r"\$\$.*?\$\$|\$[^$\n]*\$",                   # LaTeX
    r"\d+(?:\s*[×x]\s*\d+)+(?![\d.]*\s*(?:%|faster|slower))",   # shapes and products: 28×28, 3×32×32
    r"https?://\S+",
)]

# (notebook prefix, the exact text) -> why it is not a measurement this run should have made
ALLOWED = {
    ("00", "64× the learning rate"): "a setting of the recipe (RECIPES['cifar_net']), not a measurement",
    ("01", "10× too high"): "an instruction to the learner",
}


def prose(nb: dict):
    """(cell index, kind, text) for every markdown cell and every comment of every code cell."""
    for i, cell in enumerate(nb["cells"]):
        source = "".join(cell["source"])
        if cell["cell_type"] == "markdown":
            yield i, "markdown", source
        elif cell["cell_type"] == "code":
            lines = [line for line in source.splitlines() if not line.lstrip().startswith(("%", "!"))]
            try:
                tokens = list(tokenize.generate_tokens(io.StringIO("\n".join(lines) + "\n").readline))
            except (tokenize.TokenError, SyntaxError):
                continue
            comments = [t.string.lstrip("#") for t in tokens if t.type == tokenize.COMMENT]
            if comments:
                yield i, "comment", "\n".join(comments)


def measurements(text: str):
    """(number, unit class, the phrase around it) for each typed measurement in `text`."""
    for pattern in NOT_PROSE:
        text = pattern.sub(lambda m: " " * len(m.group()), text)
    for m in MEASUREMENT.finditer(text):
        yield float(m.group(1)), UNITS[m.group(2).lower()], " ".join(text[max(0, m.start() - 40):m.end() + 25].split())


def citations(stem: str) -> set[tuple[float, str]]:
    path = NOTEBOOKS[0].parent / "bands" / f"{stem}.json"
    refs = json.loads(path.read_text()).get("references", {}) if path.exists() else {}
    return {(number, unit) for text in refs.values() for number, unit, _ in measurements(str(text))}


def typed_measurements(path: Path) -> list[str]:
    nb, cited = json.loads(path.read_text()), citations(path.stem)
    found = []
    for i, kind, text in prose(nb):
        for number, unit, phrase in measurements(text):
            allowed = any(nb_id == path.name[:2] and snippet in phrase for nb_id, snippet in ALLOWED)
            if (number, unit) not in cited and not allowed:
                found.append(f"{path.name} cell {i} ({kind}): {number:g} {unit} in ...{phrase}...")
    return found


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_no_typed_in_measurements(path):
    found = typed_measurements(path)
    assert not found, ("prose states measurements the run does not produce; print them from the run, choose "
                       "the sentence with results.claim, or cite them in the bands' references:\n  "
                       + "\n  ".join(found))


def test_every_allowed_phrase_is_still_there():
    texts = {p.name[:2]: "\n".join(t for _, _, t in prose(json.loads(p.read_text()))) for p in NOTEBOOKS}
    stale = [f"{nb} {snippet!r}" for nb, snippet in ALLOWED if snippet not in texts.get(nb, "")]
    assert not stale, f"ALLOWED names phrases no notebook has any more (remove them): {stale}"


@pytest.mark.parametrize("text, expected", [
    ("int8 was 3.1x faster", [(3.1, "times")]),
    ("accuracy 98.2% after about 2 s per epoch", [(98.2, "percent"), (2.0, "s")]),
    ("lost 0.6 points, 6 dB per bit, 1.2 MB", [(0.6, "points"), (6.0, "dB"), (1.2, "bytes")]),
    ("a 28×28 image, 3 × 3 convs, 1×28×28 input, 784 x 300 weights", []),
    ("the knob `SPARSITY = 0.9` keeps 10% of weights", [(10.0, "percent")]),
    ("$10 \\log_{10} x$ in 2-D, LeNet-5, lenet300", []),
])
def test_the_check_finds_measurements_and_only_them(text, expected):
    assert [(n, u) for n, u, _ in measurements(text)] == expected
