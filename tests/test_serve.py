"""mokit.serve: bad input -> 4xx, refused swaps keep the old model, zero failures during a swap,
and the server process is gone after its `with` block (also after an exception)."""

import json
import os
import re
import time

import numpy as np
import pytest
import torch

from mokit import serve as S
from mokit.export import export_onnx
from mokit.models import create_model
from mokit.train import seed_everything

IMG = (1, 28, 28)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """v1 and v2 ONNX files (different LeNet-5 widths), a corrupt file and a wrong-input-shape file."""
    d = tmp_path_factory.mktemp("models")
    seed_everything(0)
    export_onnx(create_model("lenet5"), d / "v1.onnx", IMG)
    export_onnx(create_model("lenet5", channels=(6, 12), hidden=32), d / "v2.onnx", IMG)
    export_onnx(create_model("lenet300", in_shape=(1, 14, 14)), d / "small_input.onnx", (1, 14, 14))
    (d / "corrupt.onnx").write_bytes((d / "v1.onnx").read_bytes()[:5000])
    return d


@pytest.fixture(scope="module")
def client(models):
    from fastapi.testclient import TestClient

    return TestClient(S.create_app(models / "v1.onnx", max_body_bytes=200_000, max_batch=4))


def _post(client, body: bytes, path="/predict"):
    r = client.post(path, content=body, headers={"Content-Type": "application/json"})
    return r.status_code, r.json().get("detail", r.json())


def test_predict_returns_classes_and_probabilities(client, models):
    x = torch.randn(3, *IMG)
    status, answer = _post(client, S.encode_images(x))
    assert status == 200 and answer["version"] == "v1"
    ref = S.OrtModel(models / "v1.onnx").run(np.round(x.numpy(), 5))
    assert answer["classes"] == ref.argmax(1).tolist()
    p = np.array(answer["probabilities"])
    assert p.shape == (3, 10) and np.allclose(p.sum(1), 1, atol=1e-4)
    assert np.allclose(p, torch.softmax(torch.from_numpy(ref).double(), 1).numpy(), atol=1e-5)


BAD = {
    "non-JSON": (b"{images: oops", 422, "not valid JSON"),
    "no images key": (b'{"pixels": []}', 422, "key 'images'"),
    "JSON list": (b"[1, 2]", 422, "got list"),
    "wrong shape": (json.dumps({"images": np.zeros((2, 28, 28)).tolist()}).encode(), 422,
                    r"shape \(2, 28, 28\); allowed: \(batch >= 1, 1, 28, 28\)"),
    "empty batch": (b'{"images": []}', 422, "allowed: \\(batch >= 1"),
    "strings": (json.dumps({"images": [[[["a"] * 28] * 28]]}).encode(), 422, "must be numbers"),
    "booleans": (json.dumps({"images": [[[[True] * 28] * 28]]}).encode(), 422, "got booleans"),
    "ragged": (json.dumps({"images": [[[[0.0] * 28] * 27 + [[0.0] * 3]]]}).encode(), 422, "rectangular"),
    "NaN": (json.dumps({"images": [[[[float("nan")] * 28] * 28]]}).encode(), 422, "NaN or infinity"),
    "batch too big": (S.encode_images(np.zeros((5, *IMG))), 413, "at most 4 per request"),
    "oversized body": (b" " * 300_000, 413, "allowed: at most 200,000"),
    "5000-deep arrays": (b"[" * 5000 + b"]" * 5000, 422, "nested too deeply"),
    "5000-deep images": (b'{"images": ' + b"[" * 5000 + b"]" * 5000 + b"}", 422, "nested too deeply"),
    "100-deep images": (b'{"images": ' + b"[" * 100 + b"0" + b"]" * 100 + b"}", 422, "rectangular nested list"),
    "5000-digit number": (b'{"images": [' + b"9" * 5000 + b"]}", 422, "not valid JSON.*digits"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_gets_a_clear_4xx(client, case):
    body, code, message = BAD[case]
    status, detail = _post(client, body)
    assert status == code, detail
    assert re.search(message, detail), detail


@pytest.mark.parametrize("body", [b"[" * 5000 + b"]" * 5000, b'{"a":' * 5000 + b"1" + b"}" * 5000,
                                  b'{"path": ' + b"[" * 5000 + b"]" * 5000 + b', "version": "v2"}',
                                  b'{"path": ' + b"9" * 5000 + b', "version": "v2"}'],
                         ids=["arrays", "objects", "nested path", "5000-digit path"])
def test_nested_or_huge_json_to_model_is_a_422(client, body):
    status, detail = _post(client, body, "/model")
    assert status == 422 and re.search("nested too deeply|not valid JSON", detail), detail
    assert client.get("/health").json()["version"] == "v1"


@pytest.mark.parametrize("ctype", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data", None])
def test_post_bodies_must_be_json(client, models, ctype):
    """A browser page can POST text/plain cross-origin without asking; JSON needs a preflight."""
    bodies = {"/predict": S.encode_images(torch.zeros(1, *IMG)),
              "/model": json.dumps({"path": str(models / "v2.onnx"), "version": "v2"}).encode()}
    for path, body in bodies.items():
        r = client.post(path, content=body, headers={"Content-Type": ctype} if ctype else {})
        assert r.status_code == 415 and "allowed: application/json" in r.json()["detail"], r.text
    assert client.get("/health").json()["version"] == "v1"
    r = client.post("/predict", content=bodies["/predict"], headers={"Content-Type": "application/json; charset=utf-8"})
    assert r.status_code == 200


def test_crafted_versions_and_paths_are_refused(client, models):
    v2 = str(models / "v2.onnx")
    for version in ['v2"} 1\nmokit_injected_total 1', "v" * 65, "", " v2", "v2\n", "-v2", 2, None, ["v2"]]:
        status, detail = _post(client, json.dumps({"path": v2, "version": version}).encode(), "/model")
        assert status == 422 and "version must be 1-64 characters" in detail, (version, detail)
    for path, code in [(str(models / ("a" * 5000)), 422), (str(models / "v\x002.onnx"), 422), (5, 422),
                       (None, 422), (str(models), 404)]:
        status, detail = _post(client, json.dumps({"path": path, "version": "v3"}).encode(), "/model")
        assert status == code and "swap refused, still serving v1" in detail, (path, detail)
    assert client.get("/health").json() == {"status": "ok", "version": "v1"}


def test_metrics_labels_are_escaped_and_bounded(client):
    from prometheus_client.parser import text_string_to_metric_families

    m = S.Metrics(buckets=(0.1,))
    m.observe('/a"}\\ 1\nx 1', 404, 0.01)
    text = m.render('v"3\\\n', swaps=0)
    samples = [s for f in text_string_to_metric_families(text) for s in f.samples]
    assert {s.labels.get("endpoint") for s in samples} == {'/a"}\\ 1\nx 1', None}
    assert [s.labels for s in samples if s.name == "mokit_model_info"] == [{"version": 'v"3\\\n'}]
    assert 'endpoint="/a\\"}\\\\ 1\\nx 1"' in text

    client.get("/unknown/first"), client.get("/metrics")            # the "other" and /metrics series exist now
    before = len(client.get("/metrics").text)
    for path in ["/a%22%7D%201", "/x%22%7D%201%0Amokit_injected_total%201", *(f"/unknown/{i}" for i in range(50))]:
        assert client.get(path).status_code == 404
    text = client.get("/metrics").text
    samples = [s for f in text_string_to_metric_families(text) for s in f.samples]
    assert {s.labels["endpoint"] for s in samples if "endpoint" in s.labels} <= {"/predict", "/model", "/metrics",
                                                                               "/health", "other"}
    assert not any("injected" in s.name for s in samples)
    assert len(text) - before < 100                  # counts grow by a digit or two; no new series


def test_bad_settings_are_refused_before_any_work(models, tmp_path, monkeypatch):
    started = []
    monkeypatch.setattr(S.subprocess, "Popen", lambda *a, **kw: started.append(a))
    v1 = models / "v1.onnx"
    cases = [(dict(max_body_bytes=-1), ValueError, "max_body_bytes must be an integer >= 1, got -1"),
             (dict(max_body_bytes=True), ValueError, "max_body_bytes must be an integer"),
             (dict(threads=0), ValueError, "threads must be an integer >= 1"),
             (dict(version='v"}'), ValueError, "version must be 1-64 characters"),
             (dict(model_dir=tmp_path / "nope"), FileNotFoundError, "model_dir must be an existing folder.*nope"),
             (dict(port=70000), ValueError, "port must be an integer in \\[1, 65535\\]"),
             (dict(startup_timeout=float("nan")), ValueError, "startup_timeout must be a finite number > 0")]
    for kwargs, error, message in cases:
        with pytest.raises(error, match=message):
            S.Server(v1, **kwargs).start()
        if "port" not in kwargs and "startup_timeout" not in kwargs:
            with pytest.raises(error, match=message):
                S.create_app(v1, **kwargs)
    assert started == []


@pytest.mark.parametrize("args, message", [
    (["--max-body-bytes", "-1"], "--max-body-bytes must be an integer >= 1, got -1"),
    (["--max-body-bytes", "0"], "--max-body-bytes must be an integer >= 1, got 0"),
    (["--model-dir", "/no/such/folder"], "--model-dir must be an existing folder .*'/no/such/folder'"),
    (["--threads", "0"], "--threads must be an integer >= 1"),
    (["--port", "70000"], "--port must be an integer in \\[1, 65535\\], got 70000"),
    (["--version", "v1\"} 1"], "--version must be 1-64 characters"),
])
def test_command_line_refuses_bad_values(models, capsys, monkeypatch, args, message):
    import uvicorn

    monkeypatch.setattr(uvicorn, "run", lambda *a, **kw: pytest.fail("the server started"))
    with pytest.raises(SystemExit) as exit_:
        S.main([str(models / "v1.onnx"), *args])
    assert exit_.value.code == 2
    assert re.search(message, capsys.readouterr().err)


def test_command_line_refuses_a_missing_model(tmp_path, capsys):
    with pytest.raises(SystemExit):
        S.main([str(tmp_path / "gone.onnx")])
    assert "no ONNX model file at" in capsys.readouterr().err


def test_refused_swaps_keep_the_old_model(client, models, tmp_path):
    cases = {"missing.onnx": 404, "corrupt.onnx": 422, "small_input.onnx": 422}
    for name, code in cases.items():
        status, detail = _post(client, json.dumps({"path": str(models / name), "version": "v9"}).encode(), "/model")
        assert status == code and "swap refused, still serving v1" in detail, detail
    outside = tmp_path / "v1.onnx"
    outside.write_bytes((models / "v1.onnx").read_bytes())
    status, detail = _post(client, json.dumps({"path": str(outside), "version": "v9"}).encode(), "/model")
    assert status == 403 and "outside the model folder" in detail
    assert _post(client, b'{"path": 3}', "/model")[0] == 422
    assert client.get("/health").json() == {"status": "ok", "version": "v1"}
    assert _post(client, S.encode_images(torch.zeros(1, *IMG)))[1]["version"] == "v1"


def test_metrics_are_prometheus_text():
    m = S.Metrics(buckets=(0.01, 0.1))
    for s, code in [(0.005, 200), (0.05, 200), (0.5, 422)]:
        m.observe("/predict", code, s)
    text = m.render("v3", swaps=2)
    assert 'mokit_requests_total{endpoint="/predict",status="200"} 2' in text
    assert 'mokit_requests_total{endpoint="/predict",status="422"} 1' in text
    for le, n in [("0.01", 1), ("0.1", 2), ("+Inf", 3)]:                  # cumulative buckets
        assert f'mokit_request_latency_seconds_bucket{{endpoint="/predict",le="{le}"}} {n}' in text
    assert 'mokit_request_latency_seconds_count{endpoint="/predict"} 3' in text
    assert 'mokit_request_latency_seconds_sum{endpoint="/predict"} 0.555000' in text
    assert 'mokit_model_info{version="v3"} 1' in text and "mokit_model_swaps_total 2" in text


def _gone(pid: int) -> bool:
    for _ in range(50):
        if not os.path.exists(f"/proc/{pid}"):
            return True
        time.sleep(0.1)
    return False


def test_real_server_load_test_with_swap_has_no_failures(models):
    bodies = [S.encode_images(torch.randn(1, *IMG)) for _ in range(8)]
    with S.Server(models / "v1.onnx") as srv:
        pid = srv.proc.pid
        assert S.swap_model(srv.url, models / "corrupt.onnx", "v2")["status"] == 422
        r = S.load_test(srv.url, bodies, requests=300, concurrency=8,
                        swap=lambda: S.swap_model(srv.url, models / "v2.onnx", "v2"))
        metrics = S.request(srv.url, "GET", "/metrics")[1].decode()
    assert r["failed"] == 0, r["errors"]
    assert r["swap"]["ok"] and set(r["versions"]) == {"v1", "v2"} and sum(r["versions"].values()) == 300
    assert 0 < r["p50_ms"] <= r["p99_ms"] and r["throughput"] > 0
    assert 'mokit_model_info{version="v2"} 1' in metrics
    assert 'mokit_requests_total{endpoint="/predict",status="200"} 300' in metrics
    assert _gone(pid) and not srv.alive


def test_server_stops_after_an_exception(models):
    srv = S.Server(models / "v1.onnx")
    with pytest.raises(RuntimeError, match="a failing cell"), srv:
        pid = srv.proc.pid
        raise RuntimeError("a failing cell")
    assert _gone(pid)
    with pytest.raises(FileNotFoundError, match=r"no ONNX model file at .*nothing\.onnx"):
        S.Server(models / "nothing.onnx")


@pytest.mark.parametrize("clients", [[], "4", [0], [2, 1.5], [True], None])
def test_load_sweep_refuses_bad_client_counts_before_any_request(clients):
    with pytest.raises(ValueError, match="clients"):
        S.load_sweep("http://127.0.0.1:9", [b"{}"], clients)         # nothing listens there: no request made


def test_load_sweep_runs_one_load_test_per_client_count(models):
    from mokit import plot

    bodies = [S.encode_images(torch.randn(1, *IMG)) for _ in range(4)]
    with S.Server(models / "v1.onnx") as srv:
        sweep = S.load_sweep(srv.url, bodies, [1, 2], requests=40, warmup=5)
    assert [r["concurrency"] for r in sweep] == [1, 2]
    assert all(r["failed"] == 0 and r["throughput"] > 0 and 0 < r["p50_ms"] <= r["p99_ms"] for r in sweep)
    fig = plot.load_sweep(sweep, title="test")
    assert [line.get_label() for ax in fig.axes for line in ax.get_lines()] == ["throughput", "p50", "p99"]
