"""mokit.student: every instructor solution passes its checker, every stub fails it helpfully, and
the student copies (stubs in, outputs out) still run."""

import json
from pathlib import Path

import nbformat
import pytest
from nbrun import run_notebook

from mokit import check, student
from mokit.results import load_results

NOTEBOOKS = student.notebooks(Path(__file__).resolve().parent.parent / "notebooks")
EXERCISES = [ex for p in NOTEBOOKS for ex in student.find_exercises(p)]
CHEAP = ["05_distillation", "07_hyperparameter_search"]     # the quickest SMOKE runs with exercises


@pytest.fixture(autouse=True)
def _fresh():
    check.reset()
    yield
    check.reset()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_every_notebook_has_one_to_five_exercises(path):
    assert 1 <= len(student.find_exercises(path)) <= 5


def test_the_course_has_at_least_25_exercises_in_at_least_10_notebooks():
    assert len(EXERCISES) >= 25 and len({ex.notebook for ex in EXERCISES}) >= 10


@pytest.mark.parametrize("ex", EXERCISES, ids=[f"{e.notebook}-{e.function}" for e in EXERCISES])
def test_instructor_solution_passes_its_checker(ex):
    result, printed = student.run_checker(ex, ex.source)
    assert result, printed
    assert printed.startswith(f"✓ {ex.checker}: ")


@pytest.mark.parametrize("ex", EXERCISES, ids=[f"{e.notebook}-{e.function}" for e in EXERCISES])
def test_stub_fails_its_checker_with_a_hint(ex):
    assert "raise NotImplementedError(\"Exercise: " in ex.stub and student.BEGIN not in ex.stub
    result, printed = student.run_checker(ex, ex.stub)
    assert not result
    assert "not done yet" in printed and "hint: " in printed, printed


def test_stub_keeps_the_def_docstring_and_indentation():
    source = ('import torch\n\ndef f(x):\n    """Double x: 2x."""\n    # BEGIN SOLUTION\n    y = 2 * x\n'
              '    return y\n    # END SOLUTION\n\ng = 1')
    stub, found = student.stub_cell(source)
    assert stub == ('import torch\n\ndef f(x):\n    """Double x: 2x."""\n'
                    '    raise NotImplementedError("Exercise: Double x: 2x.")\n\ng = 1')
    assert found == [("f", "Double x: 2x.")]
    hinted, found = student.stub_cell('def f(x):\n    # Hint: use *\n'
                                      '    # BEGIN SOLUTION\n    return 2 * x\n    # END SOLUTION')
    assert hinted.endswith('    raise NotImplementedError("Exercise: use *")') and found == [("f", "use *")]


@pytest.mark.parametrize("source, message", [
    ("def f():\n    # BEGIN SOLUTION\n    return 1", "line 2: '# BEGIN SOLUTION' is never closed"),
    ("def f():\n    return 1\n    # END SOLUTION", "line 3: '# END SOLUTION' without a '# BEGIN SOLUTION'"),
    ("def f():\n    # BEGIN SOLUTION\n    # BEGIN SOLUTION\n    # END SOLUTION", "line 3: '# BEGIN SOLUTION' again"),
    ("# BEGIN SOLUTION\nx = 1\n# END SOLUTION", "must sit inside a function body"),
])
def test_unbalanced_or_misplaced_markers_are_named(source, message):
    with pytest.raises(ValueError, match=r"my\.ipynb, cell 3, line") as e:
        student.stub_cell(source, "my.ipynb, cell 3")
    assert message in str(e.value)


def test_a_notebook_with_an_unbalanced_marker_fails_make_student(tmp_path, capsys):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("def f():\n    # BEGIN SOLUTION\n    return 1")])
    (tmp_path / "nb").mkdir()
    nbformat.write(nb, tmp_path / "nb" / "01_bad.ipynb")
    assert student.main(["--notebooks", str(tmp_path / "nb"), "--out", str(tmp_path / "out")]) == 1
    assert "01_bad.ipynb, cell 0, line 2: '# BEGIN SOLUTION' is never closed" in capsys.readouterr().err


@pytest.fixture(scope="module")
def copies(tmp_path_factory):
    """make student into a temp folder; the instructor notebooks' bytes before and after."""
    out = tmp_path_factory.mktemp("student")
    before = {p: p.read_bytes() for p in NOTEBOOKS}
    assert student.main(["--out", str(out)]) == 0
    return out, before


def test_student_copies_are_stubbed_and_clean_and_instructor_copies_untouched(copies):
    out, before = copies
    assert sorted(p.name for p in out.glob("*.ipynb")) == [p.name for p in NOTEBOOKS]
    assert {p: p.read_bytes() for p in NOTEBOOKS} == before
    for path in NOTEBOOKS:
        nb = nbformat.read(out / path.name, as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert not any(c.outputs or c.execution_count for c in code)
        text = "\n".join(c.source for c in code)
        assert student.BEGIN not in text and student.END not in text
        assert text.count("raise NotImplementedError(\"Exercise: ") == len(student.find_exercises(path))
        assert "parameters" in code[0].metadata.get("tags", [])


@pytest.mark.notebook
@pytest.mark.parametrize("stem", CHEAP)
def test_student_copy_runs_and_records_no_exercise_passed(stem, copies, tmp_path, monkeypatch):
    out, _ = copies
    monkeypatch.setenv("MOKIT_RUNS", str(tmp_path / "runs"))       # apart from the instructor runs
    run_notebook(out / f"{stem}.ipynb", tmp_path / "out.ipynb", cwd=out, SMOKE=True)
    results = load_results(stem)
    assert results["exercises_passed"] == 0
    executed = json.loads((tmp_path / "out.ipynb").read_text())
    printed = "".join("".join(o.get("text", "")) for c in executed["cells"] for o in c.get("outputs", []))
    assert printed.count("not done yet") == sum(ex.notebook == stem for ex in EXERCISES)


def test_student_lab_opens_the_student_copies():
    """`make student-lab` writes fresh copies first, then roots JupyterLab at student/, not notebooks/."""
    import shutil
    import subprocess
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    dry = subprocess.run(["make", "-n", "-W", "requirements.txt", "student-lab"], cwd=student.REPO,
                         capture_output=True, text=True, check=True).stdout.splitlines()
    build = [i for i, line in enumerate(dry) if "-m mokit.student" in line]
    lab = [i for i, line in enumerate(dry) if "jupyter lab" in line]
    assert build and lab and build[-1] < lab[-1], dry
    assert dry[lab[-1]].rstrip().endswith("student/") and "notebooks" not in dry[lab[-1]], dry[lab[-1]]
