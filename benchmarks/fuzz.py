"""Fuzz the public API with bad inputs and count what happens (issue 13).

    python benchmarks/fuzz.py              # every edge input of tests/test_fuzz.py's targets, once
    python benchmarks/fuzz.py --limit 5    # per-call time limit in seconds (default 5)

The inputs are the edge values of every fuzzed argument of every target in tests/test_fuzz.py
(NaN, inf, -1, 0, True, huge integers, wrong types, misspelt names, empty data, and a few valid
values so that success is checked too), one argument at a time, the others valid. Each call runs in
a worker process under a time limit (SIGALRM inside the worker; a worker that stops answering, say
stuck in C code, is killed and restarted) and an address-space cap, on tiny synthetic data, the CPU,
and temporary runs/cache folders. It prints how many inputs got a clear ValueError / TypeError naming
the argument before any work, how many hung, crashed with another exception, or silently succeeded
with a wrong result, and lists every input that did not get the right answer.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MARK = "@@fuzz "
KINDS = {
    "refused": "clear ValueError/TypeError naming the argument, before any work",
    "succeeded": "valid value, succeeded with a valid result",
    "hung": "hung (past the time limit)",
    "crashed": "crashed with another exception",
    "accepted_invalid": "silently succeeded although the value is invalid",
    "wrong_result": "succeeded with a wrong result",
    "unclear": "ValueError/TypeError that does not name the argument",
    "after_work": "ValueError/TypeError only after work was done",
    "refused_valid": "valid value refused",
}


def _load_suite():
    import importlib.util

    sys.path[:0] = [str(ROOT), str(ROOT / "tests")]         # test_fuzz imports conftest from tests/
    spec = importlib.util.spec_from_file_location("fuzz_targets", ROOT / "tests" / "test_fuzz.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module                      # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _inputs(suite) -> list[tuple[int, str, int]]:
    return [(ti, arg, vi) for ti, t in enumerate(suite.TARGETS)
            for arg, spec in sorted(t.args.items()) for vi in range(len(spec.edges))]


def worker(limit: float) -> None:
    """Answer one line per input index read from stdin: MARK + JSON outcome."""
    suite = _load_suite()
    from mokit import data as D

    inputs = _inputs(suite)
    folders = [D.runs_root(), Path(os.environ["MOKIT_CACHE"]), Path.cwd()]
    print(MARK + json.dumps({"count": len(inputs)}), flush=True)
    for line in sys.stdin:
        ti, arg, vi = inputs[int(line)]
        target = suite.TARGETS[ti]
        spec = target.args[arg]
        value = spec.edges[vi]
        about = {"target": target.name, "arg": arg, "value": repr(value)[:60], "valid": bool(spec.valid(value))}
        print(MARK + json.dumps({"start": about}), flush=True)
        out = suite.exercise(target, arg, value, folders, seconds=limit)
        print(MARK + json.dumps({"kind": out.kind, "detail": out.detail, **about}), flush=True)


class Worker:
    def __init__(self, limit: float, env: dict, cwd: str):
        self.limit, self.env, self.cwd = limit, env, cwd
        self.start()

    def start(self):
        with open(Path(self.cwd) / "worker.log", "a") as log:       # the worker keeps its own copy
            self.proc = subprocess.Popen([sys.executable, __file__, "--worker", "--limit", str(self.limit)],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                                         env=self.env, cwd=self.cwd, bufsize=0)
        self.buffer = b""                                   # bytes read but not yet split into lines
        self.first = self.read(300)
        if self.first is None:
            raise SystemExit(f"the fuzz worker did not start; see {Path(self.cwd) / 'worker.log'}")

    def read(self, timeout: float):
        """The next answer, or None when none came within `timeout` seconds."""
        end, fd = time.monotonic() + timeout, self.proc.stdout.fileno()
        while True:
            while b"\n" in self.buffer:                         # select() cannot see buffered lines
                line, self.buffer = self.buffer.split(b"\n", 1)
                text = line.decode(errors="replace")
                if text.startswith(MARK):
                    return json.loads(text[len(MARK):])
            left = end - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return None                                     # the worker died
            self.buffer += chunk

    def ask(self, i: int) -> dict:
        """The outcome of input i; a worker that stops answering is killed and restarted."""
        self.proc.stdin.write(f"{i}\n".encode())
        start = self.read(60) or {}
        answer = self.read(self.limit * 4 + 20)
        if answer is None:
            self.kill()
            self.start()
            return {"kind": "hung", "detail": "the worker stopped answering (killed, restarted)",
                    **start.get("start", {"target": "?", "arg": "?", "value": f"input {i}", "valid": False})}
        return answer

    def kill(self):
        self.proc.kill()
        self.proc.wait()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=float, default=5.0, help="seconds per call before it counts as a hang")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(args.limit)
        return
    tmp = tempfile.mkdtemp(prefix="mokit-fuzz-")
    env = {**os.environ, "MOKIT_DEVICE": "cpu", "MOKIT_RUNS": f"{tmp}/runs", "MOKIT_CACHE": f"{tmp}/cache",
           "MOKIT_PROGRESS": "0", "PYTHONPATH": str(ROOT)}
    w = Worker(args.limit, env, tmp)
    count = w.first["count"]
    results, t0 = [], time.monotonic()
    for i in range(count):
        results.append(w.ask(i))
    w.kill()
    filled = results
    bad = [r for r in filled if not r["valid"]]
    kinds = Counter(r["kind"] for r in results)
    print(f"mokit fuzz: {count} inputs over {len({r['target'] for r in filled})} public calls "
          f"({len(bad)} invalid by the argument's rules, {len(filled) - len(bad)} valid), "
          f"per-call limit {args.limit:g} s, {time.monotonic() - t0:.0f} s in all")
    refused_bad = sum(1 for r in bad if r["kind"] == "refused")
    print(f"  invalid inputs refused with a clear ValueError/TypeError naming the argument before any work: "
          f"{refused_bad} of {len(bad)}")
    for kind, text in KINDS.items():
        print(f"  {text:<66} {kinds.get(kind, 0):>5}")
    for kind in KINDS:
        if kind in ("refused", "succeeded") or not kinds.get(kind):
            continue
        print(f"\n{KINDS[kind]} ({kinds[kind]}):")
        for r in results:
            if r["kind"] == kind:
                print(f"  {r['target']}({r['arg']}={r['value']}): {r['detail'][:220]}")


if __name__ == "__main__":
    main()
