"""Trials, persisted as they finish: one JSON line per trial in <runs>/searches/<name>/trials.jsonl,
keyed by a hash of (config, budget), appended with one O_APPEND write under a lock and fsync'd.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..files import atomic_write_bytes, plain, runs_root

try:
    import fcntl
except ImportError:          # Windows: no advisory locks; each line is still one O_APPEND write
    fcntl = None  # type: ignore[assignment]


def jsonable(obj, name: str = "value"):
    """A config or metrics as the trial log stores them (files.plain; NaN kept, as a failed side metric may be)."""
    return plain(obj, name, finite=False)


def tuples_back(config: dict) -> dict:
    """JSON turns tuples into lists; choices hold tuples, so turn them back."""
    return {k: tuple(tuples_back({"v": x})["v"] for x in v) if isinstance(v, list) else v for k, v in config.items()}


def trial_key(config: dict, budget: int) -> str:
    """Stable key of (config, budget): sha1 of their canonical JSON (sorted keys)."""
    blob = json.dumps({"config": jsonable(config), "budget": budget}, sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


@dataclass
class Trial:
    """One evaluation: config at budget -> metrics, with its cost and outcome."""
    config: dict
    budget: int
    metrics: dict
    seconds: float
    status: str = "ok"               # "ok" | "failed" | "pruned"
    error: str = ""
    key: str = ""
    resumed: bool = False            # read back from the trial log instead of run
    info: dict = field(default_factory=dict)

    def value(self, metric: str, maximize: bool = True) -> float:
        """The metric, or the worst possible value for a failed trial."""
        v = self.metrics.get(metric) if self.status == "ok" else None
        return float(v) if v is not None else (-math.inf if maximize else math.inf)


class TrialLog:
    """Append-only JSON-lines file of finished trials, one fsync'd line each (safe to SIGKILL).

    Several processes may append: each append holds an exclusive lock on the file (flock) while it
    repairs a torn tail and writes its line. A kill that tears the last line mid-write leaves a
    fragment; the next append first ends a tail that is a whole record with its missing newline, or
    cuts a fragment that is no record, so it never glues its own line onto it. Reading skips torn
    lines and still finds a whole record glued onto a torn one (as an older mokit wrote them).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def load(self) -> dict[str, Trial]:
        trials: dict[str, Trial] = {}
        if not self.path.exists():
            return trials
        fd = os.open(self.path, os.O_RDONLY)
        try:
            _lock(fd, exclusive=False)                # no half-written line of a live appender
            blob = _read_from(fd, 0)
        finally:
            os.close(fd)
        for line in blob.decode("utf-8", errors="replace").splitlines():
            t = _parse_record(line)
            if t is not None:
                trials.setdefault(t.key, t)           # the first record of a key wins
        return trials

    def append(self, trial: Trial) -> None:
        line = (json.dumps(jsonable({**asdict(trial), "resumed": False})) + "\n").encode()
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            _lock(fd, exclusive=True)
            _repair_tail(fd)
            _write_all(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)                              # releases the lock


def _lock(fd: int, *, exclusive: bool) -> None:
    """flock the open file (released when it is closed); a no-op where there is no fcntl (Windows)."""
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)


def _read_from(fd: int, start: int) -> bytes:
    os.lseek(fd, start, os.SEEK_SET)
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


def _write_all(fd: int, payload: bytes) -> None:
    view = memoryview(payload)
    while view:
        view = view[os.write(fd, view):]


def _parse_record(line: str) -> Trial | None:
    """The Trial on one line of the log, or None for a torn line.

    A line that does not parse may be a torn record with a whole one glued after it (an older
    mokit appended without repairing the tail): the whole record is the part from a later
    '{"config"' that parses to the end of the line.
    """
    starts = [0] + [i for i in range(1, len(line)) if line.startswith('{"config"', i)]
    for i in starts:
        try:
            obj, end = json.JSONDecoder().raw_decode(line, i)
            if line[end:].strip() or not isinstance(obj, dict):
                continue
            t = Trial(**obj)
        except (json.JSONDecodeError, TypeError):
            continue
        if not isinstance(t.key, str) or not t.key or not isinstance(t.config, dict):
            continue
        t.config = tuples_back(t.config)
        return t
    return None


def _repair_tail(fd: int) -> None:
    """Under the appenders' lock: end the file with a newline, so the next line starts on its own.

    A tail after the last newline that is a whole record (killed before its newline) gets the
    newline; a fragment that is no record (killed mid-write) is cut off. No whole record is lost.
    """
    size = os.fstat(fd).st_size
    if size == 0:
        return
    os.lseek(fd, size - 1, os.SEEK_SET)
    if os.read(fd, 1) == b"\n":
        return
    start, step = size, 1 << 16                   # find the last newline, reading backwards
    while start > 0:
        lo = max(0, start - step)
        os.lseek(fd, lo, os.SEEK_SET)
        block = os.read(fd, start - lo)
        nl = block.rfind(b"\n")
        if nl >= 0:
            start = lo + nl + 1
            break
        start = lo
    tail = _read_from(fd, start)
    if _parse_record(tail.decode("utf-8", errors="replace")) is not None:
        _write_all(fd, b"\n")
    else:
        os.ftruncate(fd, start)
    os.fsync(fd)


def check_search_name(name) -> str:
    if not isinstance(name, str) or not name or name.startswith(".") or any(c in name for c in "/\\\0"):
        raise ValueError(f"search name must be a plain folder name, got {name!r}")
    return name


def search_path(name: str) -> Path:
    """Folder of the search called `name`: <runs>/searches/<name>."""
    check_search_name(name)
    return runs_root() / "searches" / name



def check_same_search(folder: Path, args: dict) -> None:
    """A named search resumes only with the arguments it started with: the first call writes them to
    <folder>/search.json, a later one with others is a ValueError naming what changed (use another name)."""
    path = folder / "search.json"
    args = jsonable(args)
    if path.exists():
        before = json.loads(path.read_text())
        if changed := sorted(k for k in set(before) | set(args) if before.get(k) != args.get(k)):
            diff = "; ".join(f"{k}: {before.get(k)!r} then, {args.get(k)!r} now" for k in changed)
            raise ValueError(f"search {folder.name!r} was started with other arguments ({diff}): resume it with "
                             f"those, or give it another name to start anew")
    else:
        atomic_write_bytes(path, json.dumps(args, sort_keys=True).encode())
