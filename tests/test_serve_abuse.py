"""A real server under abuse: malformed, deeply nested, oversized and wrongly typed requests, injected
label values and hundreds of unknown paths. Every bad request gets a 4xx (none a 5xx), and /metrics
afterwards parses with a real Prometheus text parser, holds no injected series and stays small."""

import http.client
import json

import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from mokit import serve as S
from mokit.export import export_onnx
from mokit.models import create_model
from mokit.train import seed_everything

IMG = (1, 28, 28)
MAX_BODY = 200_000
INJECTED = 'v2"} 1\nmokit_injected_total 1\nmokit_model_info{version="evil'


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("abuse_models")
    seed_everything(0)
    export_onnx(create_model("lenet5"), d / "v1.onnx", IMG)
    export_onnx(create_model("lenet5", channels=(6, 12), hidden=32), d / "v2.onnx", IMG)
    return d


def _send(url, method, path, body=None, headers=None, chunked=False) -> int:
    """The status of one raw request (http.client: no client-side JSON, any header, chunked bodies)."""
    host, port = url.split("//")[1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        conn.request(method, path, body=body, headers=headers or {}, encode_chunked=chunked)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def _nested(depth: int, open_=b"[", close=b"]", inner=b"0") -> bytes:
    return open_ * depth + inner + close * depth


def _bad_requests(models) -> dict[str, tuple]:
    """name -> (method, path, body, headers, chunked): each must be refused with a 4xx."""
    j = {"Content-Type": "application/json"}
    v2 = str(models / "v2.onnx")
    swap = lambda path, version: json.dumps({"path": path, "version": version}).encode()   # noqa: E731
    cases = {}
    malformed = {"not JSON": b"{images: oops", "empty": b"", "unterminated": b'{"images": [1, 2',
                 "bad UTF-8": b"\xff\xfe\xfa", "null": b"null", "number": b"123", "string": b'"images"',
                 "NaN images": b'{"images": NaN}', "huge int": b'{"images": [' + b"9" * 5000 + b"]}",
                 "huge int path": b'{"path": ' + b"9" * 5000 + b', "version": "v2"}',
                 "list body": b"[1, 2]", "images not a list": b'{"images": {"a": 1}}'}
    nested = {"arrays 5000 deep": _nested(5000), "objects 5000 deep": _nested(5000, b'{"a":', b"}"),
              "images 5000 deep": b'{"images": ' + _nested(5000) + b"}",
              "images 100 deep": b'{"images": ' + _nested(100) + b"}",
              "images 60 deep": b'{"images": ' + _nested(60) + b"}",
              "path 5000 deep": b'{"path": ' + _nested(5000) + b', "version": "v2"}',
              "version 5000 deep": b'{"path": "x.onnx", "version": ' + _nested(5000) + b"}"}
    for group in (malformed, nested):
        for name, body in group.items():
            for endpoint in ("/predict", "/model"):
                cases[f"{name} -> {endpoint}"] = ("POST", endpoint, body, j, False)
    for endpoint in ("/predict", "/model"):
        cases[f"oversized body -> {endpoint}"] = ("POST", endpoint, b" " * (MAX_BODY + 1), j, False)
        cases[f"oversized chunked -> {endpoint}"] = ("POST", endpoint, iter([b" " * 50_000] * 5), j, True)
        cases[f"declared 1 GB -> {endpoint}"] = ("POST", endpoint, b"{}", {**j, "Content-Length": str(10**9)}, False)
        for ctype in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
                      "application/json-patch+json", None):
            body = S.encode_images(torch.zeros(1, *IMG)) if endpoint == "/predict" else swap(v2, "v2")
            cases[f"Content-Type {ctype} -> {endpoint}"] = ("POST", endpoint, body,
                                                           {"Content-Type": ctype} if ctype else {}, False)
    for name, version in {"injected version": INJECTED, "long version": "v" * 65, "empty version": "",
                          "version with space": "v 2", "version number": 2, "version null": None,
                          "version list": ["v2"]}.items():
        cases[name] = ("POST", "/model", swap(v2, version), j, False)
    for name, path in {"NUL in path": str(models / "v\x002.onnx"), "name too long": str(models / ("a" * 5000)),
                       "folder": str(models), "outside": "/etc/passwd", "missing": str(models / "nope.onnx"),
                       "path number": 5, "path null": None, "path list": [v2]}.items():
        cases[name] = ("POST", "/model", swap(path, "v3"), j, False)
    cases["no keys"] = ("POST", "/model", b'{"path": "x"}', j, False)
    for path in ("/a%22%7D%201", "/x%22%7D%201%0Amokit_injected_total%201", "/%5C%22", "/metrics%0Afoo",
                 "/predict/../metrics%22"):
        cases[f"GET {path}"] = ("GET", path, None, {}, False)
    for method, path in [("GET", "/predict"), ("PUT", "/model"), ("DELETE", "/health"), ("POST", "/metrics"),
                         ("PATCH", "/predict")]:
        cases[f"{method} {path}"] = (method, path, b"{}" if method != "GET" else None, j, False)
    return cases


def _get_many(url, paths) -> list[int]:
    """GET each path over one keep-alive connection; the statuses."""
    host, port = url.split("//")[1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    statuses = []
    try:
        for path in paths:
            conn.request("GET", path)
            resp = conn.getresponse()
            resp.read()
            statuses.append(resp.status)
    finally:
        conn.close()
    return statuses


def _scrape(url) -> tuple[str, list]:
    status, body = S.request(url, "GET", "/metrics")
    assert status == 200
    text = body.decode()
    return text, list(text_string_to_metric_families(text))    # raises if the page is not Prometheus text


def test_server_abuse_gets_4xx_and_metrics_stay_parseable(models):
    bad = _bad_requests(models)
    statuses: dict[str, int] = {}
    with S.Server(models / "v1.onnx", max_body_bytes=MAX_BODY, model_dir=models) as srv:
        baseline_text, _ = _scrape(srv.url)
        for name, (method, path, body, headers, chunked) in bad.items():
            try:
                statuses[name] = _send(srv.url, method, path, body, headers, chunked)
            except (ConnectionError, http.client.HTTPException) as e:   # a server may close after a 413
                statuses[name] = getattr(e, "status", 0) or 499
        for i, status in enumerate(_get_many(srv.url, [f"/unknown/{i}?q={i}" for i in range(300)])):
            statuses[f"unknown path {i}"] = status                     # the 300 unknown paths
        good = [S.predict(srv.url, torch.randn(2, *IMG)), S.swap_model(srv.url, models / "v2.onnx", "v2.1+b_c-d")]
        text, families = _scrape(srv.url)
        more = _get_many(srv.url, [f"/more/{i}%22%7D" for i in range(100)])   # the page must not grow
        text_after, _ = _scrape(srv.url)
        assert srv.alive
    assert set(more) == {404}
    not_4xx = {n: s for n, s in statuses.items() if not 400 <= s < 500}
    print(f"\n{len(statuses)} bad requests: {len(statuses) - len(not_4xx)} got a 4xx, "
          f"{sum(s >= 500 for s in statuses.values())} got a 5xx; /metrics {len(baseline_text):,} bytes before, "
          f"{len(text):,} after, {len(text_after):,} after 100 more unknown paths")
    assert not not_4xx, not_4xx
    assert good[0]["version"] == "v1" and good[1]["ok"], good

    names = {f.name for f in families}
    assert names == {"mokit_requests", "mokit_request_latency_seconds", "mokit_model_info", "mokit_model_swaps"}
    samples = [s for f in families for s in f.samples]
    assert not any("injected" in s.name or "injected" in json.dumps(s.labels) for s in samples)
    endpoints = {s.labels["endpoint"] for s in samples if "endpoint" in s.labels}
    assert endpoints <= {"/predict", "/model", "/metrics", "/health", "other"}, endpoints
    assert "other" in endpoints
    info = [s for s in samples if s.name == "mokit_model_info"]
    assert [(s.labels, s.value) for s in info] == [({"version": "v2.1+b_c-d"}, 1.0)]
    assert [s.value for s in samples if s.name == "mokit_model_swaps_total"] == [1.0]
    other = sum(s.value for s in samples if s.name == "mokit_requests_total" and s.labels["endpoint"] == "other")
    assert other >= 300
    assert len(text) < 20_000 and len(text_after) - len(text) < 200      # bounded: counts grow, lines do not
