"""Every path the kit reads or writes, atomic writes, safe loads, and values made fit for JSON.

Where files live (the only module that knows):
    datasets      $MOKIT_DATA, else <repo>/data         (may be read-only, e.g. a shared copy)
    caches        $MOKIT_CACHE, else <repo>/data        (decoded tensors, checkpoints; writable)
    run outputs   $MOKIT_RUNS, else <repo>/runs         (recorded results, executed notebooks, searches)

Standard library only at import (torch and NumPy are imported where a function needs them), so a
search worker or the course runner can use it without loading torch.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import re
import socket
import sys
import tempfile
import time
from decimal import Decimal
from numbers import Integral, Real
from pathlib import Path

_REPO = Path(__file__).resolve().parent.parent


NOTEBOOK_NAME = re.compile(r"\d\d[a-z]?_\w+\.ipynb")     # 04_quantization.ipynb, 04b_low_bits.ipynb


def course_notebooks(folder: str | os.PathLike) -> list[Path]:
    """The course's notebooks in `folder`, in order: NN_name.ipynb, with NNb_name.ipynb right after NN."""
    return sorted(p for p in Path(folder).glob("*.ipynb") if NOTEBOOK_NAME.fullmatch(p.name))


def data_root() -> Path:
    """Folder where datasets are looked for ($MOKIT_DATA or <repo>/data)."""
    return Path(os.environ.get("MOKIT_DATA") or _REPO / "data").expanduser().resolve()


def cache_root() -> Path:
    """Writable folder for decoded tensors and checkpoints ($MOKIT_CACHE or <repo>/data)."""
    path = Path(os.environ.get("MOKIT_CACHE") or _REPO / "data").expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def runs_root() -> Path:
    """Folder for run outputs: recorded numbers, executed notebooks ($MOKIT_RUNS or <repo>/runs)."""
    path = Path(os.environ.get("MOKIT_RUNS") or _REPO / "runs").expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def checkpoint_path(name: str) -> Path:
    """Where the checkpoint called `name` lives: <cache root>/checkpoints/<name>.pt, never outside it.

    `name` is a plain file stem: no path separators, no '..', not hidden (a leading '.').
    """
    if not isinstance(name, str) or not name or name.startswith(".") or ".." in name \
            or any(c in name for c in ("/", "\\", "\0", os.sep, os.altsep or "/")):
        raise ValueError(f"checkpoint name must be a plain file stem (no path separators, no '..', "
                         f"not starting with '.'), got {name!r}")
    folder = cache_root() / "checkpoints"
    path = folder / f"{name}.pt"
    if path.resolve().parent != folder.resolve():
        raise ValueError(f"checkpoint name {name!r} points outside {folder}")
    folder.mkdir(parents=True, exist_ok=True)
    return path


def process_umask() -> int:
    """The process's umask, read without changing it where the OS allows (Linux: /proc/self/status).

    Elsewhere os.umask is the only way to read it, and it sets it: then it is set back at once.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_HOST = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:6]   # names this machine in temp files
STALE_TMP_SECONDS = 3600               # a temp file untouched this long is never being written now


def _tmp_prefix(path: Path) -> str:
    """Temp files of `path` are .<name>.<pid>@<host>.<random>.tmp: they name the process writing them."""
    return f".{path.name}.{os.getpid()}@{_HOST}."


def _pid_alive(pid: int) -> bool:
    if os.name == "nt":                # os.kill(pid, 0) would terminate it there: assume it lives
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:                    # e.g. another user's process: alive
        return True
    return True


def remove_stale_temp_files(path: str | os.PathLike) -> list[Path]:
    """Remove the temp files a killed atomic write of `path` left behind; returns those removed.

    Only `path`'s own pattern (.<name>.<pid>@<host>.<random>.tmp, or an older mokit's
    .<name>.<random>.tmp) counts, and only a file no writer owns now: its writer's pid (on this
    machine) is dead, or nothing touched it for STALE_TMP_SECONDS (another machine's or an older
    mokit's file, or a reused pid).
    """
    path = Path(path)
    own = re.compile(rf"\.{re.escape(path.name)}\.(?:(\d+)@([0-9a-f]{{6}})\.)?[a-z0-9_]+\.tmp")
    removed: list[Path] = []
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        m = own.fullmatch(entry.name)
        try:
            if not m or not entry.is_file(follow_symlinks=False):
                continue
            pid, host = m.groups()
            dead = pid is not None and host == _HOST and int(pid) != os.getpid() and not _pid_alive(int(pid))
            if dead or now - entry.stat(follow_symlinks=False).st_mtime > STALE_TMP_SECONDS:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:                # gone already (another writer cleaned it), or not ours to remove
            continue
    return removed


def atomic_write_bytes(path: str | os.PathLike, payload: bytes) -> Path:
    """Write `payload` to `path` via a temp file + rename, so a crash never leaves half a file.

    The temp file names its writer (pid and machine); stale ones that killed writes of `path` left
    are removed first (see remove_stale_temp_files).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_tmp_prefix(path), suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~process_umask())     # mkstemp makes 0600; give the file normal permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_torch_save(obj, path: str | os.PathLike) -> Path:
    """torch.save through an atomic write."""
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return atomic_write_bytes(path, buf.getvalue())


def safe_torch_load(path: str | os.PathLike, map_location="cpu"):
    """torch.load with weights_only=True; a damaged file raises naming the file."""
    import torch

    path = Path(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # re-raised with the file's name
        raise ValueError(f"cannot read {path}: the file is corrupt or not a mokit file ({e})") from e


def plain(value, name: str = "value", *, finite: bool = True):
    """Tensors, NumPy arrays and scalars, tuples and dicts of them -> JSON-able Python values.

    `name` says where the value sits (`key`, `key.sub`, `key[2]`) in the error a value JSON cannot
    hold raises. finite=True (recorded results) refuses NaN and inf of any numeric type; False (a
    search's metrics, where a failed side metric may be NaN) keeps them as floats.
    """
    torch, np = sys.modules.get("torch"), sys.modules.get("numpy")    # a tensor means torch is loaded
    if (torch is not None and torch.is_tensor(value)) or (np is not None and isinstance(value, np.ndarray)):
        return plain(value.tolist(), name, finite=finite)
    if np is not None and isinstance(value, (np.bool_, np.integer, np.floating)):     # longdouble too
        value = bool(value) if isinstance(value, np.bool_) else int(value) if isinstance(value, np.integer) \
            else float(value)
    elif np is not None and isinstance(value, np.generic):          # datetime64, str_, ...: Python's own
        item = value.item()
        if isinstance(item, np.generic):
            raise TypeError(f"cannot record {name}: a {type(value).__name__} ({value!r})")
        return plain(item, name, finite=finite)
    if isinstance(value, dict):
        return {str(k): plain(v, f"{name}.{k}", finite=finite) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v, f"{name}[{i}]", finite=finite) for i, v in enumerate(value)]
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, Integral):
        return int(value)
    if isinstance(value, (Real, Decimal)):
        number = float(value)
        if finite and (not math.isfinite(number) or (isinstance(value, Decimal) and not value.is_finite())):
            raise ValueError(f"refusing to record a non-finite number: {name} = {value!r} "
                             f"(JSON holds finite numbers only)")
        return number
    raise TypeError(f"cannot record {name}: a {type(value).__name__} ({value!r}); record numbers, strings, "
                    f"bools, None, tensors, NumPy arrays, or lists / dicts of them")
