"""mokit.search's trial log under kills that tear a record mid-write: no finished trial is run again, none lost."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mokit import search as S

REPO = Path(__file__).resolve().parent.parent

TOY = {"x": S.int_range(0, 5), "y": S.int_range(0, 5), "z": S.choice("a", "b", "c")}


def toy(config, budget):
    return -(config["x"] - 3) ** 2 - (config["y"] - 1) ** 2 - (0 if config["z"] == "b" else 2) - 1.0 / budget


# A search whose records reach the disk slowly (16 bytes every 10 ms), so that a SIGKILL can land in
# the middle of one; each append that returned is acknowledged in `acks` (the ground truth of what finished).
WORKER = """
import json, os, sys, time
sys.path.insert(0, {repo!r})
from mokit import search as S
TOY = {{"x": S.int_range(0, 5), "y": S.int_range(0, 5), "z": S.choice("a", "b", "c")}}
real_write = os.write
def slow_write(fd, data):
    data = bytes(data)
    if b'"config"' not in data[:16]:
        return real_write(fd, data)
    for i in range(0, len(data), 16):                 # one record, torn into pieces on the way to disk
        real_write(fd, data[i:i + 16])
        time.sleep(0.01)
    return len(data)
os.write = slow_write
real_append = S.TrialLog.append
def append(self, trial):
    real_append(self, trial)
    with open({acks!r}, "a") as f:
        f.write(trial.key + "\\n")
S.TrialLog.append = append
def objective(config, budget):
    with open({calls!r}, "a") as f:
        f.write(S.trial_key(config, budget) + "\\n")
    return -(config["x"] - 3) ** 2 - (config["y"] - 1) ** 2 - (0 if config["z"] == "b" else 2)
r = S.{strategy}(objective, TOY, budget=1, n_trials={n}, seed=3, path={path!r})
print(json.dumps([t.key for t in r.trials]))
"""


def _complete_lines(log: Path) -> int:
    blob = log.read_bytes() if log.exists() else b""
    return blob.count(b"\n")


def _torn(log: Path) -> bool:
    blob = log.read_bytes() if log.exists() else b""
    return bool(blob) and not blob.endswith(b"\n")


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


@pytest.mark.parametrize("strategy", ["random_search", "evolution"])
def test_kills_that_tear_records_never_repeat_or_lose_a_finished_trial(tmp_path, strategy):
    n, kills = 10, 3
    calls, acks, path = tmp_path / "calls.txt", tmp_path / "acks.txt", tmp_path / "search"
    log = path / "trials.jsonl"
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(repo=str(REPO), calls=str(calls), acks=str(acks), path=str(path),
                                    strategy=strategy, n=n))
    torn_kills, snapshots = 0, []                              # (finished keys, trials started) after each kill
    for _ in range(kills):
        before = _complete_lines(log)
        proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.DEVNULL)
        deadline = time.time() + 60
        while time.time() < deadline and proc.poll() is None:    # a new record on disk, the next one half-way
            if _complete_lines(log) >= before + 1 and _torn(log):
                break
            time.sleep(0.002)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        torn_kills += _torn(log)
        snapshots.append((set(_lines(acks)), len(_lines(calls))))
    assert torn_kills == kills                                  # every kill tore a record mid-write
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, check=True)
    keys = json.loads(out.stdout.strip().splitlines()[-1])
    ran = _lines(calls)
    assert len(keys) == n and len(set(keys)) == n
    repeated = [k for finished, started in snapshots for k in ran[started:] if k in finished]
    assert repeated == []                                       # no finished trial ran again
    assert len(ran) == n + kills                                # only the kills' torn trials ran twice
    loaded = S.TrialLog(log).load()
    assert set(_lines(acks)) <= set(loaded) and set(keys) == set(loaded)   # none lost
    records = [json.loads(line) for line in log.read_text().splitlines()]  # every line whole again
    assert sorted(r["key"] for r in records) == sorted(keys)    # each trial recorded once
    fresh = getattr(S, strategy)(toy, TOY, budget=1, n_trials=n, seed=3)
    assert keys == [t.key for t in fresh.trials]                # the same sequence as an unbroken run


def test_a_torn_tail_written_by_hand_is_repaired_before_the_next_append(tmp_path):
    calls = []
    counted = lambda c, b: calls.append(S.trial_key(c, b)) or toy(c, b)    # noqa: E731
    S.random_search(counted, TOY, budget=1, n_trials=3, seed=0, path=tmp_path)
    log = tmp_path / "trials.jsonl"
    with open(log, "a") as f:
        f.write('{"config": {"x": 1')                      # a write killed half-way
    S.random_search(counted, TOY, budget=1, n_trials=5, seed=0, path=tmp_path)
    assert len(calls) == 5
    again = S.random_search(counted, TOY, budget=1, n_trials=5, seed=0, path=tmp_path)
    assert len(calls) == 5 and all(t.resumed for t in again.trials)     # the 4th and 5th were not glued
    assert len(S.TrialLog(log).load()) == 5
    assert [json.loads(line)["key"] for line in log.read_text().splitlines()] == calls


def test_a_whole_record_missing_only_its_newline_is_kept(tmp_path):
    S.random_search(toy, TOY, budget=1, n_trials=2, seed=0, path=tmp_path)
    log = tmp_path / "trials.jsonl"
    log.write_bytes(log.read_bytes()[:-1])              # killed between the record and its "\n"
    assert len(S.TrialLog(log).load()) == 2
    calls = []
    r = S.random_search(lambda c, b: calls.append(1) or toy(c, b), TOY, budget=1, n_trials=3, seed=0,
                        path=tmp_path)
    assert len(calls) == 1 and [t.resumed for t in r.trials] == [True, True, False]
    assert len(log.read_text().splitlines()) == 3 and len(S.TrialLog(log).load()) == 3


def test_a_record_glued_onto_a_torn_line_by_an_older_writer_is_read_back(tmp_path):
    S.random_search(toy, TOY, budget=1, n_trials=3, seed=0, path=tmp_path)
    log = tmp_path / "trials.jsonl"
    lines = log.read_text().splitlines()
    log.write_text(lines[0] + "\n" + lines[1][:40] + lines[2] + "\n")     # torn 2nd record, 3rd glued on
    loaded = S.TrialLog(log).load()
    assert set(loaded) == {json.loads(lines[0])["key"], json.loads(lines[2])["key"]}


APPENDER = """
import sys
sys.path.insert(0, {repo!r})
from mokit import search as S
log = S.TrialLog({log!r})
for i in range({n}):
    log.append(S.Trial({{"w": {w}, "i": i}}, 1, {{"score": 1.0}}, 0.0, key=f"{w}-{{i}}"))
"""


def test_concurrent_appenders_after_a_torn_tail_lose_nothing(tmp_path):
    log = tmp_path / "trials.jsonl"
    log.write_text('{"config": {"x": 1')                           # a torn record left by a kill
    procs = [subprocess.Popen([sys.executable, "-c", APPENDER.format(repo=str(REPO), log=str(log), n=100, w=w)])
             for w in range(3)]
    assert [p.wait() for p in procs] == [0, 0, 0]
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert sorted(r["key"] for r in records) == sorted(f"{w}-{i}" for w in range(3) for i in range(100))
