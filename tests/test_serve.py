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
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_gets_a_clear_4xx(client, case):
    body, code, message = BAD[case]
    status, detail = _post(client, body)
    assert status == code, detail
    assert re.search(message, detail), detail


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
    with pytest.raises(RuntimeError, match="a failing cell"):
        with srv:
            pid = srv.proc.pid
            raise RuntimeError("a failing cell")
    assert _gone(pid)
    with pytest.raises(FileNotFoundError, match="no ONNX model file at .*nothing.onnx"):
        S.Server(models / "nothing.onnx")
