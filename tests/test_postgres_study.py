"""optuna_search on a real PostgreSQL server: workers share a study, outlive each other and a server restart.

The server is a throwaway one (tests/pgserver.py: Debian's `postgresql`, initdb in a temp folder, run as a
non-root user). Without it the server tests skip, unless MOKIT_POSTGRES=required (as in .ci/run). The bad
input tests and the "trial taken by another worker" test need no server (sqlite / an unused port).
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pgserver
import pytest

from mokit import search as S
from mokit.procs import free_port

REPO = Path(__file__).resolve().parent.parent
HEARTBEAT, GRACE = 1, 6          # seconds: a killed worker's trial is failed and retried ~6 s after its last beat
WORKERS, N = 3, 12
WAIT = 150                       # seconds a worker may take (a loaded 2-core machine)
SPACE = {"a": S.float_range(0.0, 1.0), "b": S.float_range(1e-3, 1.0, log=True)}

WORKER = """
import json, os, sys, time
sys.path.insert(0, {repo!r})
from mokit import search as S
url, study, n, seed, tmp, victim = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], \\
    sys.argv[6] == "victim"
space = {{"a": S.float_range(0.0, 1.0), "b": S.float_range(1e-3, 1.0, log=True)}}
storage = S.open_storage(url, heartbeat={heartbeat}, grace={grace})
open(os.path.join(tmp, "ready%d" % seed), "w").close()
while len([f for f in os.listdir(tmp) if f.startswith("ready")]) < {workers}:    # all start together
    time.sleep(0.02)

def objective(config, budget):
    if victim:                                     # the first trial of this worker never ends: it is killed
        with open(os.path.join(tmp, "victim.json.part"), "w") as f:
            json.dump(config, f)
        os.replace(os.path.join(tmp, "victim.json.part"), os.path.join(tmp, "victim.json"))
        time.sleep(600)
    time.sleep(0.25)
    return {{"score": -(config["a"] - 0.3) ** 2, "pid": os.getpid()}}

r = S.optuna_search(objective, space, budget=1, n_trials=n, storage=storage, study_name=study,
                    sampler="random", seed=seed)
print("worker", seed, "saw", len(r.trials), "trials", flush=True)
"""


@pytest.fixture(scope="module")
def pg():
    """A PostgreSQL server for this module, its tables made (workers then never race to create them)."""
    pgserver.require()
    server = pgserver.PgServer()
    try:
        S.open_storage(server.url)
        yield server
    finally:
        server.close()


def start_workers(tmp_path, url: str, study: str, victim: int | None = None) -> list[subprocess.Popen]:
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(repo=str(REPO), heartbeat=HEARTBEAT, grace=GRACE, workers=WORKERS))
    procs = []
    for i in range(WORKERS):
        with open(tmp_path / f"worker{i}.log", "w") as log:          # the worker keeps its own copy
            procs.append(subprocess.Popen([sys.executable, str(script), url, study, str(N), str(i), str(tmp_path),
                                           "victim" if i == victim else "-"], stdout=log, stderr=subprocess.STDOUT))
    return procs


def wait_all(procs, tmp_path) -> tuple[list[int], str]:
    try:
        codes = [p.wait(timeout=WAIT) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    logs = "\n".join(f"--- worker {i}:\n{(tmp_path / f'worker{i}.log').read_text()[-12000:]}"
                     for i in range(len(procs)))
    return codes, logs


def load(url: str, study: str):
    import optuna
    return optuna.load_study(study_name=study, storage=S.open_storage(url))


def states(study) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


def check_n_distinct(study) -> list:
    """study_result: exactly N finished trials, N distinct configs, nothing running or queued."""
    r = S.study_result(study)
    assert len(r.trials) == N and all(t.status == "ok" for t in r.trials), [(t.status, t.info) for t in r.trials]
    assert len({t.info["number"] for t in r.trials}) == N
    assert len({json.dumps(t.config, sort_keys=True) for t in r.trials}) == N
    assert not {"RUNNING", "WAITING"} & set(states(study)), states(study)
    return r.trials


# ---------------------------------------------------------------------------------------------
# Workers on one study
# ---------------------------------------------------------------------------------------------

def test_three_workers_finish_n_distinct_trials(pg, tmp_path):
    codes, logs = wait_all(start_workers(tmp_path, pg.url, "three"), tmp_path)
    assert codes == [0] * WORKERS, logs
    trials = check_n_distinct(load(pg.url, "three"))
    assert len({t.metrics["pid"] for t in trials}) >= 2, logs        # they shared the work (all 3, unless one lagged)


def test_killed_worker_trial_is_failed_by_the_heartbeat_and_retried(pg, tmp_path):
    procs = start_workers(tmp_path, pg.url, "killed", victim=0)
    marker, deadline = tmp_path / "victim.json", time.monotonic() + WAIT
    while not marker.exists() and procs[0].poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists(), wait_all(procs, tmp_path)[1]
    procs[0].send_signal(signal.SIGKILL)                       # mid-trial: its trial is RUNNING, its heartbeat stops
    lost = json.loads(marker.read_text())
    codes, logs = wait_all(procs, tmp_path)
    assert codes == [-signal.SIGKILL, 0, 0], logs
    study = load(pg.url, "killed")
    trials = check_n_distinct(study)
    failed = [t for t in study.get_trials(deepcopy=False) if t.state.name == "FAIL"]
    assert len(failed) == 1 and failed[0].params == lost, (failed, lost)          # marked failed by the heartbeat
    retry = [t for t in trials if t.info.get("retry_of") == [failed[0].number]]
    assert len(retry) == 1 and retry[0].config == lost, [t.info for t in trials]  # and run again, same config


def test_server_restart_mid_search_loses_nothing(pg, tmp_path):
    import optuna

    optuna.create_study(study_name="restart", storage=S.open_storage(pg.url), direction="maximize")
    procs = start_workers(tmp_path, pg.url, "restart")
    study, deadline = load(pg.url, "restart"), time.monotonic() + WAIT
    while len(done := study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))) < 3 \
            and time.monotonic() < deadline and all(p.poll() is None for p in procs):
        time.sleep(0.1)
    assert len(done) >= 3, wait_all(procs, tmp_path)[1]
    assert len(done) < N, "the search ended before the restart: make the trials longer"
    before = {t.number: (t.params, t.values) for t in done}
    pg.restart(down=1.0)                                       # every worker's connections drop; 1 s refused
    codes, logs = wait_all(procs, tmp_path)
    assert codes == [0] * WORKERS, logs + pg.server_log()
    study = load(pg.url, "restart")
    check_n_distinct(study)
    after = {t.number: (t.params, t.values) for t in study.get_trials(deepcopy=False)}
    assert all(after[n] == v for n, v in before.items())      # nothing finished was lost


# ---------------------------------------------------------------------------------------------
# Bad input: a clear error naming it, before any trial runs
# ---------------------------------------------------------------------------------------------

RAN: list[dict] = []


def never(config, budget):
    """An objective that must not run (a failing objective would only give failed trials): it records its calls."""
    RAN.append(dict(config))
    return 0.0


def test_unreachable_storage_is_named_before_any_trial():
    url = f"postgresql+psycopg2://me:s3cret@127.0.0.1:{free_port()}/db"        # nobody listens there
    t0 = time.monotonic()
    with pytest.raises(ValueError, match=r"cannot open storage postgresql\+psycopg2://me:\*\*\*@127\.0\.0\.1") as e:
        S.optuna_search(never, SPACE, budget=1, n_trials=2, storage=url, study_name="s")
    assert "s3cret" not in str(e.value) and "refused" in str(e.value) and not RAN
    assert time.monotonic() - t0 < 30
    with pytest.raises(ValueError, match="check the URL's dialect"):
        S.open_storage("postgres://me@127.0.0.1/db")               # SQLAlchemy's name is postgresql://


@pytest.mark.parametrize("bad, match", [({"heartbeat": 0}, "heartbeat"), ({"grace": 1, "heartbeat": 1}, "grace"),
                                        ({"max_retry": -1}, "max_retry"), ({"reconnect": float("nan")}, "reconnect")])
def test_bad_heartbeat_settings(tmp_path, bad, match):
    with pytest.raises(ValueError, match=match):
        S.open_storage(f"sqlite:///{tmp_path}/s.db", **bad)


def direction_mismatch(url: str):
    S.optuna_search(lambda c, b: c["a"], SPACE, budget=1, n_trials=2, storage=url, study_name="dir", seed=0)
    with pytest.raises(ValueError, match=r"study 'dir' .* exists with directions \['maximize'\], but this search "
                                         r"asks for \['minimize'\]"):
        S.optuna_search(never, SPACE, budget=1, n_trials=3, storage=url, study_name="dir", maximize=False)
    with pytest.raises(ValueError, match=r"asks for \['maximize', 'minimize'\]"):
        S.optuna_search(never, SPACE, budget=1, n_trials=3, storage=url, study_name="dir", sampler="nsga2",
                        objectives=[("score", True), ("size", False)])
    assert not RAN


def test_study_with_another_direction_is_named_before_any_trial(tmp_path):
    direction_mismatch(f"sqlite:///{tmp_path}/dir.db")


def test_study_with_another_direction_on_postgres(pg):
    direction_mismatch(pg.url)


# ---------------------------------------------------------------------------------------------
# A trial another worker failed meanwhile (its heartbeat went quiet, e.g. while the server was away)
# ---------------------------------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore:Retry.*TrialCallback is experimental")
def test_trial_failed_by_another_worker_is_retried_and_the_search_goes_on(tmp_path):
    """What fail_stale_trials does to a live worker's trial: FAIL it, queue a retry. The worker's own
    tell then fails (Optuna: 'Cannot tell a FAIL trial'); the search must go on and run the retry."""
    import optuna

    url, taken = f"sqlite:///{tmp_path}/taken.db", []
    other = S.open_storage(url)                          # another worker's connection

    def objective(config, budget):
        if len(taken) < 1:
            study = optuna.load_study(study_name="taken", storage=other)
            (running,) = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
            trial_id = other.get_trial_id_from_study_id_trial_number(other.get_study_id_from_name("taken"),
                                                                     running.number)
            other.set_trial_state_values(trial_id, optuna.trial.TrialState.FAIL)
            retry = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None) or \
                optuna.storages.RetryFailedTrialCallback                # Optuna < 4.9
            retry(max_retry=3)(study, other.get_trial(trial_id))
            taken.append(dict(config))
        return -(config["a"] - 0.3) ** 2

    r = S.optuna_search(objective, SPACE, budget=1, n_trials=4, storage=url, study_name="taken", sampler="random")
    assert len(r.trials) == 4 and all(t.status == "ok" for t in r.trials)
    (retry,) = [t for t in r.trials if "retry_of" in t.info]
    assert retry.config == taken[0] and retry.info["retry_of"] == [0]


# ---------------------------------------------------------------------------------------------
# The fixture itself
# ---------------------------------------------------------------------------------------------

def test_missing_postgres_skips_unless_required(monkeypatch):
    monkeypatch.setattr(pgserver, "find_binary", lambda name: None)
    monkeypatch.delenv("MOKIT_POSTGRES", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no initdb"):
        pgserver.require()
    monkeypatch.setenv("MOKIT_POSTGRES", "required")
    with pytest.raises(pytest.fail.Exception, match="MOKIT_POSTGRES=required but no initdb"):
        pgserver.require()


def test_server_runs_as_a_non_root_user(pg):
    owner = os.stat(pg.data).st_uid
    assert owner != 0 and (os.geteuid() != 0 or owner == pgserver.run_as().pw_uid)
