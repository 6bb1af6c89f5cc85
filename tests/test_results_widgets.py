import json

import pytest

from mokit import results, widgets


def test_record_merges_atomically_and_converts(tmp_path, monkeypatch):
    import torch
    monkeypatch.setenv("MOKIT_RUNS", str(tmp_path))
    results.record("99_demo", acc=torch.tensor(98.5), nested={"a": (1, 2)})
    out = results.record("99_demo", more=1)
    assert out == {"acc": 98.5, "nested": {"a": [1, 2]}, "more": 1}
    assert json.loads((tmp_path / "results" / "99_demo.json").read_text()) == out
    with pytest.raises(ValueError, match="non-finite"):
        results.record("99_demo", bad=float("nan"))
    with pytest.raises(ValueError, match="plain file stem"):
        results.record("../x", a=1)


def test_check_bands():
    r = {"acc": 98.4, "d": {"x": 1.0}, "flag": True}
    assert results.check_bands(r, {"acc": [98, 99], "d.x": [0, 2], "flag": True}) == []
    problems = results.check_bands(r, {"acc": [99, 100], "missing": [0, 1], "flag": False})
    assert len(problems) == 3 and "acc = 98.4, outside its band [99, 100]" in problems[0]


def test_panel_runs_fn_with_control_values():
    seen = []
    p = widgets.panel(lambda a, b: seen.append((a, b)) or a * 2,
                      a=widgets.slider(0.5, 0, 1, 0.1), b=widgets.dropdown(["x", "y"]), run_now=True)
    assert seen == [(0.5, "x")] and p.last == 1.0
    p.controls["b"].value = "y"
    assert len(seen) == 1                                      # not live: waits for the button
    p.button.click()
    assert seen[-1] == (0.5, "y")
    live = widgets.panel(lambda a: seen.append(a), live=True, a=widgets.int_slider(1, 0, 5))
    live.controls["a"].value = 3
    assert seen[-1] == 3


def test_bands_for_picks_the_sections_and_flatten_names_them(tmp_path):
    (tmp_path / "99_demo.json").write_text(json.dumps(
        {"smoke": {"acc": [10, 100]}, "smoke_real": {"acc": [90, 100]}, "full": {"acc": [98, 100]},
         "references": {"acc": "a paper"}}))
    pick = lambda real, smoke: results.bands_for("99_demo", {"real_data": real}, smoke=smoke, folder=tmp_path)  # noqa: E731
    assert pick(False, True) == {"acc": [10, 100]}
    assert pick(True, True) == {"acc": [90, 100]}                       # smoke_real tightens smoke
    assert pick(True, False) == {"acc": [98, 100]}
    assert results.load_bands("99_demo", "references", tmp_path) == {"acc": "a paper"}
    assert results.bands_for("00_missing", {}, smoke=True, folder=tmp_path) == {}
    assert results.flatten({"a": {"b": 1, "c": {}}, "d": [1]}) == {"a.b": 1, "a.c": {}, "d": [1]}


def test_bands_for_adds_the_recorded_datasets_sections(tmp_path):
    (tmp_path / "99_demo.json").write_text(json.dumps(
        {"smoke": {"acc": [10, 100], "n": 3}, "smoke_mnist": {"acc": [50, 100], "t": [1, 2]},
         "smoke_real": {"acc": [20, 100]}, "smoke_real_mnist": {"acc": [90, 100]}, "full": {"acc": [98, 100]}}))
    pick = lambda **r: results.bands_for("99_demo", r, smoke=True, folder=tmp_path)  # noqa: E731
    assert pick(real_data=False) == {"acc": [10, 100], "n": 3}
    assert pick(real_data=False, dataset="cifar10") == {"acc": [10, 100], "n": 3}       # no cifar10 section
    assert pick(real_data=False, dataset="mnist") == {"acc": [50, 100], "n": 3, "t": [1, 2]}
    assert pick(real_data=True, dataset="cifar10") == {"acc": [20, 100], "n": 3}
    assert pick(real_data=True, dataset="mnist") == {"acc": [90, 100], "n": 3, "t": [1, 2]}
    assert results.bands_for("99_demo", {"dataset": "mnist"}, smoke=False, folder=tmp_path) == {"acc": [98, 100]}
    problems = results.check_bands({"acc": 60, "n": 3}, pick(real_data=False, dataset="mnist"))
    assert problems == ["t: not recorded"]
