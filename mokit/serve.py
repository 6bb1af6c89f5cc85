"""Serve an exported ONNX model over HTTP (FastAPI + uvicorn), watch it, and swap it while it runs.

    with Server("runs/models/lenet5.onnx", version="v1") as srv:    # a real process on localhost
        predict(srv.url, images)                                   # -> classes + probabilities
        load_test(srv.url, bodies, requests=2000, concurrency=8,   # p50/p99 ms, throughput, failed
                  swap=lambda: swap_model(srv.url, "runs/models/small.int8.onnx", "v2"))
        load_sweep(srv.url, bodies, [1, 2, 4, 8])                  # one load test per number of clients
    # the process is gone here, also after an exception (finally + weakref.finalize at exit)

Endpoints: POST /predict {"images": [[[...]]]} -> {"classes", "probabilities", "version"};
GET /metrics (Prometheus text: requests by endpoint and status, latency histogram, model version);
POST /model {"path", "version"} loads and checks the new file fully, then swaps one reference
under a lock: requests already running keep the session they started with, none fails.
GET /health -> {"status": "ok", "version"}. Bad input -> 4xx with {"detail": "<what and what is allowed>"}:
any malformed, too deeply nested, oversized or wrongly typed request (POST bodies must be application/json).
/metrics labels are bounded and escaped: a path that is not an endpoint counts as endpoint="other", and a
version is 1-64 letters, digits and . _ + - (checked at start and on every swap).
"""

import argparse
import http.client
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit

import numpy as np

from . import validate
from .procs import free_port, stop_process  # free_port re-exported
from .runtime import INPUT, OUTPUT, OrtModel, check_batch, load_session  # noqa: F401 - re-exported

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)   # seconds
MAX_BODY_BYTES = 2_000_000     # a batch of 64 MNIST images as JSON is ~1 MB
MAX_BATCH = 256
VERSION_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")   # model versions: also /metrics label values
OTHER_ENDPOINT = "other"       # the /metrics label of every path that is not an endpoint (bounded label set)


# ---------------------------------------------------------------------------------------------
# 0. Settings (the runtime itself, ONNX Runtime and numpy only, is mokit.runtime: no torch, so a
#    server process starts in about a second)
# ---------------------------------------------------------------------------------------------

class TooLarge(ValueError):
    """Input that is well-formed but over a size limit (HTTP 413)."""


def check_version(version, name: str = "version") -> str:
    """A model version: 1-64 characters, letters, digits and . _ + - (starting with a letter or digit)."""
    if not isinstance(version, str) or not VERSION_PATTERN.fullmatch(version):
        shown = (version if not isinstance(version, str) or len(version) <= 80
                 else f"{version[:80]}... ({len(version)} chars)")
        raise ValueError(f"{name} must be 1-64 characters: letters, digits and . _ + - (starting with a letter "
                         f"or digit), got {shown!r}")
    return version


def check_settings(model_path, *, version: str = "v1", threads: "int | None" = 1,
                   max_body_bytes: int = MAX_BODY_BYTES, max_batch: int = MAX_BATCH, model_dir=None,
                   cli: bool = False) -> dict:
    """The service settings, checked before any work (no model loaded, no process started): ValueError
    naming a bad value, FileNotFoundError for a missing model file or model folder (cli: named as flags)."""
    name = (lambda k: "--" + k.replace("_", "-")) if cli else (lambda k: k)
    model_path = Path(model_path)
    if not model_path.is_file():
        raise FileNotFoundError(f"no ONNX model file at {model_path}")
    if model_dir is not None and not Path(model_dir).is_dir():
        raise FileNotFoundError(f"{name('model_dir')} must be an existing folder (swaps load files from it), "
                                f"got {str(model_dir)!r}: no such folder")
    return {"model_path": model_path, "version": check_version(version, name("version")),
            "threads": None if threads is None else validate.integer(name("threads"), threads, low=1, what="or None"),
            "max_body_bytes": validate.integer(name("max_body_bytes"), max_body_bytes, low=1),
            "max_batch": validate.integer(name("max_batch"), max_batch, low=1), "model_dir": model_dir}


# ---------------------------------------------------------------------------------------------
# 1. The state that outlives a request: the served model and the counters
# ---------------------------------------------------------------------------------------------

class ModelSlot:
    """The model being served. `swap` loads + checks a new file completely *before* replacing the
    one (model, version) reference under a lock; a request takes the reference once and keeps it."""

    def __init__(self, path: str | os.PathLike, version: str = "v1", *, threads: int | None = 1,
                 model_dir: str | os.PathLike | None = None):
        self.threads = threads
        self.model_dir = Path(model_dir or Path(path).parent).resolve()
        self._lock = threading.Lock()
        version = check_version(version)
        model = OrtModel(path, threads=threads)
        self.in_shape, self.num_classes = model.in_shape, self._check(model)
        self._current = (model, version)
        self.swaps = 0

    def current(self) -> tuple[OrtModel, str]:
        return self._current          # one attribute read: atomic, never half-swapped

    def _check(self, model: OrtModel) -> int:
        """Run a probe batch: the output must be (2, K) finite logits; returns K."""
        out = model.run(np.zeros((2, *model.in_shape), np.float32))
        if out.ndim != 2 or out.shape[0] != 2 or not np.isfinite(out).all():
            raise ValueError(f"{model.path.name}: probe batch gave output of shape {out.shape} "
                             f"(finite: {bool(np.isfinite(out).all())}); expected (2, classes) finite logits")
        return out.shape[1]

    def swap(self, path: str | os.PathLike, version: str) -> dict:
        """Replace the served model by the file at `path` (under model_dir) or raise, changing nothing."""
        version = check_version(version)
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path must be a file name (a string), got {type(path).__name__}")
        path = Path(path).resolve()
        if not path.is_relative_to(self.model_dir):
            raise PermissionError(f"{path} is outside the model folder {self.model_dir}; "
                                  "only files there may be served")
        model = OrtModel(path, threads=self.threads)          # FileNotFoundError / ValueError / OSError
        if model.in_shape != self.in_shape:
            raise ValueError(f"{path.name} takes inputs {model.in_shape}; the service takes {self.in_shape}")
        if (k := self._check(model)) != self.num_classes:
            raise ValueError(f"{path.name} has {k} classes; the service has {self.num_classes}")
        with self._lock:
            old = self._current[1]
            self._current = (model, version)
            self.swaps += 1
        return {"version": version, "previous": old, "path": str(path)}


def label_value(value) -> str:
    """A label value escaped as the Prometheus text format says: backslash, double quote, line feed."""
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Metrics:
    """Prometheus counters: requests by (endpoint, status) and a latency histogram per endpoint.

    Label values are escaped; the caller keeps the endpoint set bounded (create_app: OTHER_ENDPOINT)."""

    def __init__(self, buckets: Sequence[float] = BUCKETS):
        self.buckets = tuple(buckets)
        self._lock = threading.Lock()
        self.requests: Counter[tuple[str, int]] = Counter()      # (endpoint, status) -> n
        self.hist: dict[str, list[int]] = {}                     # endpoint -> counts per bucket (+Inf last)
        self.sums: dict[str, float] = defaultdict(float)         # endpoint -> total seconds

    def observe(self, endpoint: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[(endpoint, status)] += 1
            counts = self.hist.setdefault(endpoint, [0] * (len(self.buckets) + 1))
            counts[next((i for i, b in enumerate(self.buckets) if seconds <= b), len(self.buckets))] += 1
            self.sums[endpoint] += seconds

    def render(self, version: str, swaps: int) -> str:
        """The text exposition format: cumulative `le` buckets, _sum and _count per endpoint."""
        out = ["# HELP mokit_requests_total HTTP requests by endpoint and status code.",
               "# TYPE mokit_requests_total counter"]
        with self._lock:
            for (ep, status), n in sorted(self.requests.items()):
                out.append(f'mokit_requests_total{{endpoint="{label_value(ep)}",status="{label_value(status)}"}} {n}')
            out += ["# HELP mokit_request_latency_seconds Time to answer a request.",
                    "# TYPE mokit_request_latency_seconds histogram"]
            for ep, counts in sorted(self.hist.items()):
                cum, ep = np.cumsum(counts).tolist(), label_value(ep)
                for b, c in zip([*map(str, self.buckets), "+Inf"], cum):
                    out.append(f'mokit_request_latency_seconds_bucket{{endpoint="{ep}",le="{b}"}} {c}')
                out.append(f'mokit_request_latency_seconds_sum{{endpoint="{ep}"}} {self.sums[ep]:.6f}')
                out.append(f'mokit_request_latency_seconds_count{{endpoint="{ep}"}} {cum[-1]}')
        out += ["# HELP mokit_model_info The model version being served.", "# TYPE mokit_model_info gauge",
                f'mokit_model_info{{version="{label_value(version)}"}} 1',
                "# HELP mokit_model_swaps_total Successful model swaps.", "# TYPE mokit_model_swaps_total counter",
                f"mokit_model_swaps_total {swaps}"]
        return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------------------------
# 2. The app
# ---------------------------------------------------------------------------------------------

def parse_json(payload: bytes, expected: str):
    """The JSON value of a request body, else ValueError: not UTF-8 / JSON, a number over Python's digit
    limit, or nesting too deep for the parser (RecursionError, which would otherwise answer 500)."""
    try:
        return json.loads(payload)
    except RecursionError:
        raise ValueError(f"body is nested too deeply to parse; send {expected}") from None
    except ValueError as e:                  # JSONDecodeError, UnicodeDecodeError, int digit limit
        raise ValueError(f"body is not valid JSON ({str(e)[:200]}); send {expected}") from None


def parse_images(payload: bytes, in_shape: Sequence[int], max_batch: int = MAX_BATCH) -> np.ndarray:
    """JSON {"images": nested list (B, *in_shape)} -> float32 array, else ValueError saying what is wrong."""
    body = parse_json(payload, '{"images": [...]}')
    if not isinstance(body, dict) or "images" not in body:
        raise ValueError(f"JSON must be an object with key 'images'; got {type(body).__name__}"
                         + (f" with keys {sorted(body)}" if isinstance(body, dict) else ""))
    try:
        x = np.asarray(body["images"])
    except (ValueError, TypeError, OverflowError, RecursionError) as e:
        raise ValueError(f"images must be a rectangular nested list of numbers ({str(e)[:200]})") from None
    if x.dtype == object:
        raise ValueError("images must be a rectangular nested list of numbers (rows of different lengths)")
    if x.dtype.kind == "b":
        raise ValueError("images must be numbers (float or int), got booleans")
    x = check_batch(x, in_shape)
    if len(x) > max_batch:
        raise TooLarge(f"batch of {len(x)} images; allowed: at most {max_batch} per request")
    return x


def softmax(logits: np.ndarray) -> np.ndarray:
    """p_i = exp(z_i - max z) / sum_j exp(z_j - max z), row-wise."""
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def create_app(model_path: str | os.PathLike, *, version: str = "v1", threads: int | None = 1,
               max_body_bytes: int = MAX_BODY_BYTES, max_batch: int = MAX_BATCH,
               model_dir: str | os.PathLike | None = None):
    """The FastAPI app serving `model_path` (swaps only allowed to files under model_dir)."""
    from fastapi import FastAPI, HTTPException, Request
    from fastapi.responses import PlainTextResponse
    from starlette.concurrency import run_in_threadpool

    settings = check_settings(model_path, version=version, threads=threads, max_body_bytes=max_body_bytes,
                              max_batch=max_batch, model_dir=model_dir)
    threads, max_body_bytes, max_batch = settings["threads"], settings["max_body_bytes"], settings["max_batch"]
    slot, metrics = ModelSlot(model_path, version, threads=threads, model_dir=model_dir), Metrics()
    app = FastAPI(title="mokit model service")
    app.state.slot, app.state.metrics = slot, metrics
    endpoints: set[str] = set()          # filled below, once every route exists

    @app.middleware("http")
    async def count(request: Request, call_next):
        t0 = time.perf_counter()
        endpoint = request.url.path if request.url.path in endpoints else OTHER_ENDPOINT
        try:
            response = await call_next(request)
        except Exception:                  # counted as the 500 the client gets, then re-raised
            metrics.observe(endpoint, 500, time.perf_counter() - t0)
            raise
        metrics.observe(endpoint, response.status_code, time.perf_counter() - t0)
        return response

    async def read_body(request: Request) -> bytes:
        media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if media_type != "application/json":
            raise HTTPException(415, f"Content-Type {media_type or '(none)'!r}; allowed: application/json")
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_body_bytes:
            raise HTTPException(413, f"body of {int(declared):,} bytes; allowed: at most {max_body_bytes:,}")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_body_bytes:
                raise HTTPException(413, f"body over {max_body_bytes:,} bytes; allowed: at most {max_body_bytes:,}")
            chunks.append(chunk)
        return b"".join(chunks)

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "version": slot.current()[1]}

    @app.post("/predict")
    async def predict_endpoint(request: Request) -> dict:
        payload = await read_body(request)
        try:
            x = parse_images(payload, slot.in_shape, max_batch)
        except ValueError as e:
            raise HTTPException(413 if isinstance(e, TooLarge) else 422, str(e)) from None
        model, ver = slot.current()                       # this request's model, whatever swaps next
        logits = await run_in_threadpool(model.run, x)
        p = softmax(logits.astype(np.float64))
        return {"classes": p.argmax(1).tolist(), "probabilities": np.round(p, 6).tolist(), "version": ver}

    @app.post("/model")
    async def swap_endpoint(request: Request) -> dict:
        expected = '{"path": "<file.onnx>", "version": "<name>"}'
        try:
            body = parse_json(await read_body(request), expected)
        except ValueError as e:
            raise HTTPException(422, str(e)) from None
        if not isinstance(body, dict) or "path" not in body or "version" not in body:
            raise HTTPException(422, f"send JSON {expected}")
        path, new_version = body["path"], body["version"]
        try:
            return await run_in_threadpool(slot.swap, path, new_version)
        except FileNotFoundError as e:
            raise HTTPException(404, f"swap refused, still serving {slot.current()[1]}: {e}") from None
        except PermissionError as e:
            raise HTTPException(403, f"swap refused, still serving {slot.current()[1]}: {e}") from None
        except (ValueError, TypeError, OSError) as e:     # OSError: e.g. a file name too long
            raise HTTPException(422, f"swap refused, still serving {slot.current()[1]}: {str(e)[:500]}") from None

    @app.get("/metrics", response_class=PlainTextResponse)
    def metrics_endpoint() -> str:
        return metrics.render(slot.current()[1], slot.swaps)

    endpoints.update(getattr(route, "path", "") for route in app.routes)      # fixed paths only: a bounded label set
    return app


# ---------------------------------------------------------------------------------------------
# 3. The server process: started on a free localhost port, always stopped
# ---------------------------------------------------------------------------------------------

class Server:
    """`python -m mokit.serve` in a child process on a free localhost port, healthy before use.

    Stopped by stop(), by leaving the `with` block (also on an exception), by garbage collection
    or interpreter exit (weakref.finalize); the child also exits by itself if its parent dies.
    """

    def __init__(self, model_path: str | os.PathLike, *, version: str = "v1", threads: int = 1,
                 host: str = "127.0.0.1", port: int | None = None, max_body_bytes: int = MAX_BODY_BYTES,
                 model_dir: str | os.PathLike | None = None, startup_timeout: float = 60.0):
        settings = check_settings(model_path, version=version, threads=threads, max_body_bytes=max_body_bytes,
                                  model_dir=model_dir)
        if port is not None:
            port = validate.integer("port", port, low=1, high=65535, what="or None: a free one")
        startup_timeout = validate.number("startup_timeout", startup_timeout, low=0, low_open=True)
        self.model_path, threads, max_body_bytes = (settings["model_path"], settings["threads"],
                                                    settings["max_body_bytes"])
        self.version, self.threads, self.host, self.port = version, threads, host, port
        self.max_body_bytes, self.model_dir, self.startup_timeout = max_body_bytes, model_dir, startup_timeout
        self.proc: subprocess.Popen | None = None
        self._finalizer: weakref.finalize | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> "Server":
        if self.alive:
            return self
        self.port = self.port or free_port(self.host)
        cmd = [sys.executable, "-m", "mokit.serve", str(self.model_path), "--host", self.host,
               "--port", str(self.port), "--version", self.version, "--threads", str(self.threads),
               "--max-body-bytes", str(self.max_body_bytes), "--parent-pid", str(os.getpid())]
        if self.model_dir is not None:
            cmd += ["--model-dir", str(self.model_dir)]
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - the server's log, open while it runs
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self._finalizer = weakref.finalize(self, stop_process, self.proc)    # runs at exit too
        try:
            self._wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_healthy(self) -> None:
        assert self.proc is not None                  # start() made it
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with code {self.proc.returncode} while starting:\n{self.log()}")
            try:
                status, _ = request(self.url, "GET", "/health", timeout=2)
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"the server did not answer /health within {self.startup_timeout} s:\n{self.log()}")

    def log(self) -> str:
        """What the server process printed so far (last 4000 characters)."""
        if self._log is None:
            return ""
        self._log.seek(0)
        return self._log.read().decode(errors="replace")[-4000:]

    def stop(self) -> None:
        if self._finalizer is not None:
            self._finalizer()            # calls stop_process once, detaches the at-exit hook

    def __enter__(self) -> "Server":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"Server({self.model_path.name}, {self.url}, {'running' if self.alive else 'stopped'})"


def _exit_with_parent(parent_pid: int) -> None:
    """In the server process: exit as soon as the process that started us is gone (no orphans)."""
    def watch():
        while True:
            if os.getppid() != parent_pid:
                os._exit(0)
            time.sleep(0.5)
    threading.Thread(target=watch, daemon=True).start()


def main(argv: Sequence[str] | None = None) -> None:
    """python -m mokit.serve MODEL.onnx [--port 8000] [--version v1] ... (uvicorn, one process)."""
    import uvicorn

    ap = argparse.ArgumentParser(prog="python -m mokit.serve", description=main.__doc__)
    ap.add_argument("model")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--version", default="v1")
    ap.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads per request")
    ap.add_argument("--max-body-bytes", type=int, default=MAX_BODY_BYTES)
    ap.add_argument("--model-dir", default=None, help="swaps may load files from here (default: the model's folder)")
    ap.add_argument("--parent-pid", type=int, default=None, help="exit when this process is gone")
    args = ap.parse_args(argv)
    try:                       # every value checked before anything starts; argparse prints the error, exits 2
        check_settings(args.model, version=args.version, threads=args.threads, max_body_bytes=args.max_body_bytes,
                       model_dir=args.model_dir, cli=True)
        validate.integer("--port", args.port, low=1, high=65535)
    except (ValueError, OSError) as e:
        ap.error(str(e))
    if args.parent_pid is not None:
        _exit_with_parent(args.parent_pid)
    app = create_app(args.model, version=args.version, threads=args.threads,
                     max_body_bytes=args.max_body_bytes, model_dir=args.model_dir)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)


# ---------------------------------------------------------------------------------------------
# 4. Clients: one request, predictions, a swap, a bounded load test
# ---------------------------------------------------------------------------------------------

def request(url: str, method: str, path: str, body: bytes | None = None, *, timeout: float = 30,
            content_type: str = "application/json") -> tuple[int, bytes]:
    """(status, body bytes) of one HTTP request (http.client; no retries)."""
    parts = urlsplit(url)
    if not parts.hostname:
        raise ValueError(f"url {url!r} names no host; give one like http://127.0.0.1:8000")
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers={"Content-Type": content_type} if body is not None else {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def encode_images(x) -> bytes:
    """The /predict body for a batch x (tensor or array of shape (B, *in_shape))."""
    return json.dumps({"images": np.round(np.asarray(x, dtype=np.float32), 5).tolist()}).encode()


def predict(url: str, x) -> dict:
    """POST a batch to /predict; returns the JSON answer or raises RuntimeError with the server's detail."""
    status, body = request(url, "POST", "/predict", encode_images(x))
    if status != 200:
        raise RuntimeError(f"/predict answered {status}: {body.decode(errors='replace')}")
    return json.loads(body)


def swap_model(url: str, path: str | os.PathLike, version: str) -> dict:
    """Ask the server to serve `path` as `version`: {"ok", "status", ...answer or "detail"}."""
    status, body = request(url, "POST", "/model", json.dumps({"path": str(path), "version": version}).encode())
    return {"ok": status == 200, "status": status, **json.loads(body)}


def load_test(url: str, bodies: Sequence[bytes], *, requests: int = 2000, concurrency: int = 8,
              swap: Callable[[], dict] | None = None, swap_after: float = 0.5, timeout: float = 30) -> dict:
    """`requests` POST /predict calls from `concurrency` threads (keep-alive connections), bodies
    taken round-robin; swap() is called once `swap_after` of them have completed.

    Returns p50/p99 latency ms, throughput (requests/s), failed (non-200 or connection error),
    the versions that answered and the swap's result.
    """
    if requests < 1 or concurrency < 1 or not bodies:
        raise ValueError("need requests >= 1, concurrency >= 1 and bodies; "
                         f"got {requests}, {concurrency}, {len(bodies)}")
    if not 0 <= swap_after <= 1:
        raise ValueError(f"swap_after is a fraction of the requests in [0, 1], got {swap_after}")
    parts = urlsplit(url)
    lock, next_i, done = threading.Lock(), iter(range(requests)), [0]
    latencies: list[float] = []
    versions: Counter[str] = Counter()
    errors: list[str] = []
    swap_result: dict = {}
    swap_due = threading.Event()

    def client():
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
        while True:
            with lock:
                i = next(next_i, None)
            if i is None:
                break
            t0 = time.perf_counter()
            try:
                conn.request("POST", "/predict", body=bodies[i % len(bodies)],
                             headers={"Content-Type": "application/json"})
                resp = conn.getresponse()
                payload = resp.read()
                ok, note = resp.status == 200, f"{resp.status}: {payload[:200]!r}"
                ver = json.loads(payload)["version"] if ok else None
            except (OSError, http.client.HTTPException) as e:
                ok, note, ver = False, repr(e), None
                conn.close()
                conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
            ms = (time.perf_counter() - t0) * 1e3
            with lock:
                done[0] += 1
                if ok:
                    latencies.append(ms)
                    versions[ver] += 1
                else:
                    errors.append(note)
                if done[0] >= swap_after * requests:
                    swap_due.set()
        conn.close()

    def swapper():
        swap_due.wait()
        t0 = time.perf_counter()
        try:
            swap_result.update(swap())
        except Exception as e:            # reported, not lost in a thread's traceback
            swap_result.update(ok=False, error=repr(e))
        swap_result["seconds"] = time.perf_counter() - t0

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    if swap is not None:
        threads.append(threading.Thread(target=swapper))
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - start
    # the client side has torch; the service process never runs this
    from .metrics import percentile

    ms = sorted(latencies)
    return {"requests": requests, "concurrency": concurrency, "failed": len(errors),
            "p50_ms": statistics.median(ms) if ms else float("nan"), "p99_ms": percentile(ms, 0.99),
            "throughput": requests / seconds, "seconds": seconds, "versions": dict(versions),
            "swap": swap_result or None, "errors": errors[:5]}


def load_sweep(url: str, bodies: Sequence[bytes], clients: Sequence[int], *, requests: int = 300,
               warmup: int = 20) -> list[dict]:
    """One `load_test` of `requests` requests per number of concurrent clients in `clients` (in that
    order), after `warmup` requests from one client: how throughput and p50/p99 change as clients are added."""
    if isinstance(clients, (str, bytes)) or not isinstance(clients, Sequence) or not clients:
        raise ValueError(f"clients must be a non-empty sequence of client counts, got {clients!r}")
    clients = [validate.integer(f"clients[{i}]", c, low=1) for i, c in enumerate(clients)]
    if warmup:
        load_test(url, bodies, requests=warmup, concurrency=1)
    return [load_test(url, bodies, requests=requests, concurrency=c) for c in clients]


if __name__ == "__main__":
    main()
