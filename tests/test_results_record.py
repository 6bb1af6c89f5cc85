"""results.record: concurrent writers lose nothing; NumPy values are converted, non-finite ones refused by name."""

import json
import math
import subprocess
import sys
import time
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

from mokit import results

REPO = Path(__file__).resolve().parent.parent

WRITER = """
import os, sys, time
sys.path.insert(0, {repo!r})
from mokit import results
while not os.path.exists({go!r}):          # all writers start together
    time.sleep(0.001)
for i in range({n}):
    results.record("99_concurrent", **{{f"w{w}_k{{i:03d}}": i}})
"""


def test_concurrent_record_calls_lose_no_update(tmp_path, monkeypatch):
    monkeypatch.setenv("MOKIT_RUNS", str(tmp_path))
    go, writers, n = tmp_path / "go", 2, 150
    procs = [subprocess.Popen([sys.executable, "-c", WRITER.format(repo=str(REPO), go=str(go), n=n, w=w)])
             for w in range(writers)]
    time.sleep(3)                                          # let every writer import and wait at the line
    go.touch()
    assert [p.wait(timeout=300) for p in procs] == [0] * writers
    got = results.load_results("99_concurrent")
    assert sorted(got) == sorted(f"w{w}_k{i:03d}" for w in range(writers) for i in range(n))   # 0 lost
    assert not list((tmp_path / "results").glob(".*.tmp"))


@pytest.mark.parametrize("value, plain", [
    (np.array([1.0, 2.0]), [1.0, 2.0]),
    (np.array([[1, 2], [3, 4]], dtype=np.int64), [[1, 2], [3, 4]]),
    (np.float32(0.5), 0.5),
    (np.int64(7), 7),
    (np.bool_(True), True),
    (np.array(3.5), 3.5),
    (torch.tensor([1.0, 2.0]), [1.0, 2.0]),
    ({"a": np.float64(1.5), "b": (np.int32(1), 2)}, {"a": 1.5, "b": [1, 2]}),
    (Fraction(1, 4), 0.25),
    (Decimal("2.5"), 2.5),
])
def test_numpy_arrays_and_scalars_become_plain_json(tmp_path, monkeypatch, value, plain):
    monkeypatch.setenv("MOKIT_RUNS", str(tmp_path))
    out = results.record("99_np", v=value)
    assert out["v"] == plain and type(out["v"]) is type(plain)
    assert json.loads((tmp_path / "results" / "99_np.json").read_text())["v"] == plain


@pytest.mark.parametrize("numbers, name", [
    ({"bad": np.float64("nan")}, "bad"),
    ({"bad": np.float32("inf")}, "bad"),
    ({"bad": np.array([1.0, np.nan])}, r"bad\[1\]"),
    ({"bad": torch.tensor([0.0, -math.inf])}, r"bad\[1\]"),
    ({"ok": 1, "nested": {"x": np.longdouble("nan")}}, "nested.x"),
    ({"bad": Decimal("NaN")}, "bad"),
    ({"bad": [1.0, (2.0, float("inf"))]}, r"bad\[1\]\[1\]"),
])
def test_non_finite_values_of_any_numeric_type_are_refused_by_name(tmp_path, monkeypatch, numbers, name):
    monkeypatch.setenv("MOKIT_RUNS", str(tmp_path))
    results.record("99_nan", keep=1)
    before = (tmp_path / "results" / "99_nan.json").read_bytes()
    with pytest.raises(ValueError, match=rf"non-finite.*{name}|{name}.*non-finite"):
        results.record("99_nan", **numbers)
    assert (tmp_path / "results" / "99_nan.json").read_bytes() == before      # nothing written
    assert b"NaN" not in before and b"Infinity" not in before


@pytest.mark.parametrize("numbers, match", [
    ({"bad": 1 + 2j}, "bad"),
    ({"bad": object()}, "bad"),
])
def test_values_json_cannot_hold_are_refused_by_name(tmp_path, monkeypatch, numbers, match):
    monkeypatch.setenv("MOKIT_RUNS", str(tmp_path))
    with pytest.raises((TypeError, ValueError), match=match):
        results.record("99_type", **numbers)
    assert not (tmp_path / "results" / "99_type.json").exists()


@pytest.mark.parametrize("notebook", [None, 5, "", "../x", "a/b", "a\\b", ".hidden", "x\0y"])
def test_bad_notebook_names_are_refused(tmp_path, monkeypatch, notebook):
    monkeypatch.setenv("MOKIT_RUNS", str(tmp_path))
    with pytest.raises(ValueError, match="notebook name"):
        results.record(notebook, a=1)


def test_claim_says_the_sentence_its_measurement_picks_and_records_the_evidence(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MOKIT_RUNS", str(tmp_path))
    said = results.claim("99_claims", "int8_wins", 1.8 > 1.0, "int8 is {speedup:.2f}x faster",
                         "int8 is slower ({speedup:.2f}x)", speedup=1.8)
    assert said == "int8 is 1.80x faster" and capsys.readouterr().out == said + "\n"
    results.claim("99_claims", "first_layer", np.float64(0.3) > 0.5, "the first layer lost most",
                  "the first layer did not lose most ({share:.0%})", share=torch.tensor(0.3))
    results.record("99_claims", acc=98.0)                      # numbers and claims live side by side
    got = results.load_results("99_claims")
    assert got["acc"] == 98.0
    assert got["claims"]["int8_wins"] == {"held": True, "text": "int8 is 1.80x faster", "evidence": {"speedup": 1.8}}
    assert got["claims"]["first_layer"]["held"] is False
    assert got["claims"]["first_layer"]["text"] == "the first layer did not lose most (30%)"
    assert got["claims"]["first_layer"]["evidence"]["share"] == pytest.approx(0.3)
    assert "claims" not in {r["metric"].split(".")[0] for r in results.ledger()}   # the ledger lists numbers


@pytest.mark.parametrize("args, kwargs, match", [
    (("bad name", True, "a", "b"), {}, "identifier"),
    (("ok", float("nan"), "a", "b"), {}, "measured condition"),
    (("ok", None, "a", "b"), {}, "measured condition"),
    (("ok", torch.tensor(float("nan")), "a", "b"), {}, "measured condition"),
    (("ok", torch.tensor([True, False]), "a", "b"), {}, "one condition"),
    (("ok", True, "", "b"), {}, "if_held"),
    (("ok", True, "a {x}", "b"), {}, "does not give"),
    (("ok", True, "a", "b"), {"x": float("inf")}, "non-finite"),
])
def test_claim_refuses_bad_arguments_before_writing(tmp_path, monkeypatch, args, kwargs, match):
    monkeypatch.setenv("MOKIT_RUNS", str(tmp_path))
    with pytest.raises(ValueError, match=match):
        results.claim("99_claims", *args, **kwargs)
    assert results.load_results("99_claims") == {}


def test_record_cannot_overwrite_the_claims(tmp_path, monkeypatch):
    monkeypatch.setenv("MOKIT_RUNS", str(tmp_path))
    with pytest.raises(ValueError, match="claim"):
        results.record("99_claims", claims={})


def test_the_report_lists_each_claim_with_its_evidence():
    from mokit import report
    html = report.render([{"notebook": "04_quantization", "status": "ok", "seconds": 1.0, "bands": {},
                           "results": {"acc": 1.0, "claims": {"int8_wins": {"held": False, "text": "int8 is slower",
                                                                            "evidence": {"speedup": 0.8}}}}}])
    assert "int8 is slower" in html and "speedup = 0.8" in html and "1 claims" in html
    assert "claims.int8_wins" not in html                       # not in the numbers table
