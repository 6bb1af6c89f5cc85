"""Student copies of the notebooks: `python -m mokit.student` (what `make student` runs).

An instructor notebook marks each exercise's solution inside the function the learner writes,
and calls its checker in the next code cell:

    def magnitude_mask(w, sparsity):
        \"\"\"0/1 mask zeroing the round(sparsity * n) smallest |w|.\"\"\"
        # BEGIN SOLUTION
        ...
        # END SOLUTION

    check.magnitude_mask(magnitude_mask);

The student copy (in student/, the instructor copy untouched) keeps the def line, docstring and
comments and replaces each region by `raise NotImplementedError("Exercise: <hint>")`, where the hint
is a `# Hint: ...` comment just above the region, else the docstring's first line. Outputs are
cleared. An exercise cell must import what it uses, so it can be checked on its own (`verify`).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import nbformat

from .files import course_notebooks

BEGIN, END = "# BEGIN SOLUTION", "# END SOLUTION"
REPO = Path(__file__).resolve().parent.parent
CHECK_CALL = re.compile(r"check\.(\w+)\((\w+)\);?")


@dataclass(frozen=True)
class Exercise:
    """One solution region: where it is, the function it completes and the checker that grades it."""
    notebook: str
    cell: int                # index of the solution cell in the notebook
    function: str
    checker: str
    hint: str
    source: str              # the instructor's cell
    stub: str                # the student's cell


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _hint(lines: list[str], begin: int, def_line: int) -> str:
    """A `# Hint:` comment right above the region, else the docstring's first line."""
    above = lines[begin - 1].strip() if begin > 0 else ""
    if above.lower().startswith("# hint:"):
        return above[len("# hint:"):].strip()
    body = "\n".join(lines[def_line + 1:begin]).strip()
    for quote in ('"""', "'''"):
        if body.startswith(quote):
            return body[3:].split(quote)[0].strip().splitlines()[0]
    return f"write the body of {lines[def_line].strip().removeprefix('def ').split('(')[0]}"


def stub_cell(source: str, where: str = "cell") -> tuple[str, list[tuple[str, str]]]:
    """(source with each solution region replaced by a NotImplementedError stub, [(function, hint)]).

    Raises ValueError naming `where` and the line for an unbalanced marker or a region that is
    not inside a function body (a bare `raise` there would stop the whole notebook).
    """
    lines, out, found, begin = source.splitlines(), [], [], None
    for i, line in enumerate(lines):
        mark = line.strip()
        if mark == BEGIN:
            if begin is not None:
                raise ValueError(f"{where}, line {i + 1}: {BEGIN!r} again before {END!r} (line {begin + 1} opened it)")
            begin = i
        elif mark == END:
            if begin is None:
                raise ValueError(f"{where}, line {i + 1}: {END!r} without a {BEGIN!r} before it")
            indent = _indent(lines[begin])
            def_line = next((j for j in range(begin - 1, -1, -1)
                             if lines[j].lstrip().startswith("def ") and _indent(lines[j]) < indent), None)
            if indent == 0 or def_line is None:
                raise ValueError(f"{where}, line {begin + 1}: a solution region must sit inside a function body "
                                 f"(indented under its def), so that the stub only fails when it is called")
            hint = _hint(lines, begin, def_line)
            function = lines[def_line].strip().removeprefix("def ").split("(")[0]
            found.append((function, hint))
            out.append(" " * indent + "raise NotImplementedError("
                       + json.dumps("Exercise: " + hint, ensure_ascii=False) + ")")
            begin = None
        elif begin is None:
            out.append(line)
    if begin is not None:
        raise ValueError(f"{where}, line {begin + 1}: {BEGIN!r} is never closed by {END!r}")
    return "\n".join(out), found


def find_exercises(path: Path) -> list[Exercise]:
    """Every exercise of the notebook at `path`, each with the checker its next code cell calls."""
    nb = nbformat.read(path, as_version=4)
    exercises = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code" or (BEGIN not in cell.source and END not in cell.source):
            continue
        stub, found = stub_cell(cell.source, f"{path.name}, cell {i}")
        nxt = next((c for c in nb.cells[i + 1:] if c.cell_type == "code"), None)
        call = CHECK_CALL.fullmatch(nxt.source.strip()) if nxt is not None else None
        if len(found) != 1 or call is None or call.group(2) != found[0][0]:
            raise ValueError(f"{path.name}, cell {i}: an exercise cell holds one solution region, inside the "
                             f"function it completes, and the next code cell is exactly `check.<name>(<function>);`")
        exercises.append(Exercise(path.stem, i, found[0][0], call.group(1), found[0][1], cell.source, stub))
    return exercises


def student_copy(path: Path, out_dir: Path) -> Path:
    """Write the student copy of the notebook at `path` into `out_dir`: stubs in, outputs out."""
    nb = nbformat.read(path, as_version=4)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            if BEGIN in cell.source or END in cell.source:
                cell.source = stub_cell(cell.source, f"{path.name}, cell {i}")[0]
            cell.outputs, cell.execution_count = [], None
    out_dir.mkdir(parents=True, exist_ok=True)
    dest = out_dir / path.name
    tmp = dest.with_suffix(".tmp")
    nbformat.write(nb, tmp)
    tmp.replace(dest)
    return dest


def run_checker(exercise: Exercise, source: str):
    """Execute an exercise cell's `source` on its own and grade its function: (result, printed text)."""
    from . import check

    namespace: dict = {"__name__": f"exercise_{exercise.function}"}
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(source, f"<{exercise.notebook} cell {exercise.cell}>", "exec"), namespace)
        result = getattr(check, exercise.checker)(namespace[exercise.function])
    return result, printed.getvalue()


def verify(exercise: Exercise) -> tuple[list[str], str]:
    """(problems, what the checker said to the stub): the solution must pass its checker, the stub
    must fail it with "not done yet" and a hint."""
    problems = []
    solved, text = run_checker(exercise, exercise.source)
    if not solved:
        problems.append(f"the solution fails its checker:\n{text}")
    stubbed, said = run_checker(exercise, exercise.stub)
    if stubbed or "not done yet" not in said or "hint:" not in said:
        problems.append(f"the stub does not fail with 'not done yet' and a hint:\n{said}")
    return problems, said


def notebooks(folder: Path) -> list[Path]:
    return course_notebooks(folder)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write student copies of the notebooks (solutions stubbed out).")
    parser.add_argument("--notebooks", type=Path, default=REPO / "notebooks", help="the instructor notebooks")
    parser.add_argument("--out", type=Path, default=REPO / "student", help="where the student copies go")
    args = parser.parse_args(argv)
    paths = notebooks(args.notebooks)
    if not paths:
        print(f"no notebooks (NN_name.ipynb) in {args.notebooks}", file=sys.stderr)
        return 1
    failed = 0
    for path in paths:
        try:
            exercises = find_exercises(path)
            dest = student_copy(path, args.out)
        except ValueError as e:
            print(f"✗ {e}", file=sys.stderr)
            return 1
        print(f"{dest}: {len(exercises)} exercise(s)")
        for ex in exercises:
            problems, said = verify(ex)
            failed += bool(problems)
            status = "✗ " + "; ".join(problems) if problems else "✓ the solution passes; the stub gets:"
            print(f"  {ex.function} (check.{ex.checker}): {status}")
            print("\n".join("      " + line.strip() for line in said.strip().splitlines()))
    if failed:
        print(f"{failed} exercise(s) with problems", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
