"""data.atomic_write_bytes / atomic_torch_save: a save killed before its rename leaves a temp file; the next
write of the same target removes it (only that target's, only ones no live writer owns)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mokit import data
from mokit.files import _HOST

REPO = Path(__file__).resolve().parent.parent

SAVER = """
import os, sys, time
sys.path.insert(0, {repo!r})
import torch
from mokit import data
def hang(fd):                        # the payload is written; the kill lands before fsync and rename
    print("writing", flush=True)
    time.sleep(600)
os.fsync = hang
data.atomic_torch_save({{"w": torch.zeros(1000)}}, {target!r})
"""


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _killed_save(target: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", SAVER.format(repo=str(REPO), target=str(target))],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def test_a_killed_saves_temp_file_is_removed_by_the_next_write_of_that_target(tmp_path):
    target = tmp_path / "model.pt"
    _killed_save(target)
    left = list(tmp_path.glob(".model.pt.*.tmp"))
    assert len(left) == 1 and not target.exists()                  # the kill left its temp file behind
    data.atomic_torch_save({"w": torch.ones(3)}, target)
    assert torch.equal(data.safe_torch_load(target)["w"], torch.ones(3))
    assert list(tmp_path.glob(".*.tmp")) == []


def test_only_the_targets_own_stale_temp_files_go(tmp_path):
    target, host, dead, old = tmp_path / "model.pt", _HOST, _dead_pid(), time.time() - 2 * 3600
    files = {
        "dead": f".model.pt.{dead}@{host}.abcdefgh.tmp",             # its writer is gone: removed
        "live": f".model.pt.{os.getpid()}@{host}.abcdefgh.tmp",      # a live writer (this process): kept
        "other_target": f".model.pt.1.{dead}@{host}.abcdefgh.tmp",   # model.pt.1's, not model.pt's: kept
        "other_file": f".other.pt.{dead}@{host}.abcdefgh.tmp",       # kept
        "other_host": f".model.pt.{dead}@000000.abcdefgh.tmp",       # a pid of another machine: kept
        "other_host_old": f".model.pt.{dead}@000001.abcdefgh.tmp",   # ... unless untouched for an hour
        "legacy": ".model.pt.abcdefgh.tmp",                          # no writer named: kept while fresh
        "legacy_old": ".model.pt.ijklmnop.tmp",                      # removed once an hour old
        "not_tmp": "model.pt.abcdefgh.tmp",                          # not hidden: not a temp file of ours
    }
    for name in files.values():
        (tmp_path / name).write_bytes(b"half a checkpoint")
    for key in ("other_host_old", "legacy_old"):
        os.utime(tmp_path / files[key], (old, old))
    data.atomic_write_bytes(target, b"whole")
    assert target.read_bytes() == b"whole"
    gone = {k for k, name in files.items() if not (tmp_path / name).exists()}
    assert gone == {"dead", "other_host_old", "legacy_old"}
    assert sorted(p.name for p in tmp_path.glob(".model.pt.*.tmp") if str(os.getpid()) in p.name) == [files["live"]]


def test_temp_files_name_their_writer(tmp_path, monkeypatch):
    seen = []
    real = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: seen.append(Path(src).name) or real(src, dst))
    data.atomic_write_bytes(tmp_path / "x.json", b"{}")
    assert seen and seen[0].startswith(f".x.json.{os.getpid()}@{_HOST}.") and seen[0].endswith(".tmp")


def test_importing_and_writing_leave_the_process_umask_alone(tmp_path):
    """The umask is read from /proc where Linux has it; importing mokit never sets it."""
    if not Path("/proc/self/status").exists():
        pytest.skip("no /proc/self/status here: the umask can only be read by setting it back at once")
    script = f"""
import os, sys
sys.path.insert(0, {str(REPO)!r})
def refuse(mask):
    raise AssertionError("os.umask was called")
os.umask = refuse
import mokit.data, mokit.files, mokit.results, mokit.search
p = mokit.files.atomic_write_bytes({str(tmp_path / 'x.bin')!r}, b"x")
print(oct(p.stat().st_mode & 0o777), oct(mokit.files.process_umask()))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    mode, mask = (int(v, 8) for v in out.stdout.split())
    assert mode == 0o666 & ~mask
