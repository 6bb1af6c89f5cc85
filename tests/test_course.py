"""`python -m mokit.course` on tiny generated notebooks: statuses, exit code, report.html with numbers and plots."""

import json

import nbformat
import pytest

from mokit import course
from mokit.data import runs_root

PLOT = """import matplotlib.pyplot as plt   # the kernel's inline backend makes it a PNG output
plt.figure(figsize=(2, 1.5)); plt.plot([0, 1], [0, SCALE]); plt.show()"""


def _notebook(folder, name, *cells):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("SCALE = 1", metadata={"tags": ["parameters"]})]
    nb.cells += [nbformat.v4.new_code_cell(c) for c in cells]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, folder / f"{name}.ipynb")


@pytest.fixture(scope="module")
def course_dir(tmp_path_factory):
    """01_ok records numbers (scaled by the SCALE parameter) and plots; 02_raises fails halfway."""
    folder = tmp_path_factory.mktemp("course")
    (folder / "bands").mkdir()
    _notebook(folder, "01_ok", PLOT, "from mokit.results import record\n"
              "record('01_ok', real_data=False, acc=21.0 * SCALE, nested={'ratio': 0.5})")
    _notebook(folder, "02_raises", PLOT, "raise ValueError('deliberate failure')")
    bands = {"references": {"acc": "Someone et al. 2020: 42"},
             "full": {"acc": [40, 45], "nested.ratio": [0.4, 0.6]}}
    (folder / "bands" / "01_ok.json").write_text(json.dumps(bands))
    return folder


def _report():
    return (runs_root() / "course" / "report.html").read_text()


def test_course_ok_report_lists_numbers_time_and_plots(course_dir):
    assert course.main(["--notebooks", str(course_dir), "-p", "SCALE=2", "01"]) == 0
    html = _report()
    assert "01_ok" in html and "02_raises" not in html
    assert "<td class=ok>ok</td>" in html
    assert ">42<" in html and "[40, 45]" in html and "Someone et al. 2020: 42" in html and "nested.ratio" in html
    assert html.count("<img ") == 1 and "src='data:image/png;base64,iVBOR" in html
    assert "<td>cpu</td>" in html and "<td>stand-in</td>" in html
    assert "http" not in html.replace("http-equiv", "")   # self-contained: no external assets
    row = json.loads((runs_root() / "course" / "course.json").read_text())[0]
    assert row["status"] == "ok" and row["seconds"] > 0 and row["device"] == "cpu" and row["data"] == "stand-in"


def test_broken_band_and_raising_notebook_fail_the_course(course_dir, tmp_path, capsys):
    bands = tmp_path / "bands"
    bands.mkdir()
    (bands / "01_ok.json").write_text(json.dumps({"full": {"acc": [90, 100], "missing": [0, 1]}}))
    assert course.main(["--notebooks", str(course_dir), "--bands", str(bands)]) == 1
    out = capsys.readouterr().out
    assert "acc = 21.0, outside its band [90, 100]" in out and "missing: not recorded" in out
    rows = {r["notebook"]: r for r in json.loads((runs_root() / "course" / "course.json").read_text())}
    assert rows["01_ok"]["status"] == "outside band"
    assert rows["02_raises"]["status"] == "error" and "deliberate failure" in rows["02_raises"]["problems"][0]
    html = _report()
    assert "<td class=error>error</td>" in html and "<td class=outside>outside band</td>" in html
    assert "<tr class=bad><td>acc</td>" in html and "deliberate failure" in html
    assert html.count("<img ") == 2   # the raising notebook's plot before the error is kept


def test_bad_parameter_is_refused():
    with pytest.raises(SystemExit):
        course.main(["-p", "no equals sign"])
    with pytest.raises(SystemExit, match="no notebook matches"):
        course.main(["--notebooks", ".", "99"])
