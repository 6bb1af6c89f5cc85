"""mokit.classroom: students' searches share one study through Optuna's gRPC proxy, on localhost.

Three student processes fill one study through a proxy in front of a temp SQLite file; the proxy is
stopped and started again (same file, same port) while they run: they wait for it and go on, and every
finished trial is in the file. Also: the leaderboard, the default host (127.0.0.1; the room only when
asked), the dashboard answering HTTP, and bad inputs refused before any trial.
"""

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("grpc", reason="the classroom proxy needs grpcio (pip install 'mokit[scale]')")
optuna = pytest.importorskip("optuna")
if not hasattr(optuna.storages, "GrpcStorageProxy"):
    pytest.skip("Optuna < 4.2 has no gRPC storage proxy", allow_module_level=True)

from mokit import classroom as C  # noqa: E402
from mokit import search as S  # noqa: E402
from mokit.procs import free_port, stop_process  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
STUDENTS, N, STUDY = ("Ada", "Grace", "Alan"), 18, "room"
WAIT = 75                        # seconds the students may take (a loaded 2-core machine, a restart in between)

CLIENT = """
import sys, time
sys.path.insert(0, {repo!r})
from mokit import search as S
address, study, n, seed, student = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]

def objective(config, budget):
    time.sleep(0.3)
    return {{"val_acc": 1 - (config["x"] - 0.3) ** 2 - (config["y"] - 0.6) ** 2}}

r = S.optuna_search(objective, {{"x": S.float_range(0.0, 1.0), "y": S.float_range(0.0, 1.0)}}, budget=1,
                    n_trials=n, metric="val_acc", sampler="random", seed=seed, storage=address,
                    study_name=study, user_attrs={{"student": student}})
print(student, "saw", len(r.trials), "trials", flush=True)
"""


def objective(config, budget):
    return {"val_acc": 1 - (config["x"] - 0.3) ** 2}


SPACE = {"x": S.float_range(0.0, 1.0)}


def start_proxy(tmp_path, url: str, port: int, tag: str) -> tuple[subprocess.Popen, str]:
    """`python -m mokit.classroom serve` in a child process; (the process, its banner) once it listens."""
    out = tmp_path / f"proxy-{tag}.log"
    with open(out, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "mokit.classroom", "serve", "--storage", url, "--port",
                                 str(port), "--no-dashboard", "--parent-pid", str(os.getpid())],
                                stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    deadline = time.monotonic() + 40
    while "Ctrl-C stops it" not in out.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_process(proc)
            pytest.fail(f"the proxy did not start:\n{out.read_text()}")
        time.sleep(0.1)
    return proc, out.read_text()


def complete(url: str) -> list:
    """The study's COMPLETE trials, read from the SQLite file itself (not through the proxy)."""
    try:
        study = optuna.load_study(study_name=STUDY, storage=url)
    except KeyError:
        return []
    return study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))


def test_three_students_share_one_study_through_a_proxy_restart(tmp_path):
    url, port = f"sqlite:///{tmp_path / 'study.db'}", free_port()
    proxy, banner = start_proxy(tmp_path, url, port, "first")
    procs: list[subprocess.Popen] = [proxy]
    try:
        address = f"grpc://127.0.0.1:{port}"
        assert f"STORAGE = {address!r}" in banner and "bound to 127.0.0.1" in banner     # the default: this machine
        script = tmp_path / "client.py"
        script.write_text(CLIENT.format(repo=str(REPO)))
        for i, name in enumerate(STUDENTS):
            with open(tmp_path / f"client{i}.log", "w") as log:
                procs.append(subprocess.Popen([sys.executable, str(script), address, STUDY, str(N), str(i), name],
                                              stdout=log, stderr=subprocess.STDOUT))
        clients = procs[1:]
        deadline = time.monotonic() + WAIT
        while len(complete(url)) < N // 3 and time.monotonic() < deadline:
            time.sleep(0.2)
        proxy.send_signal(signal.SIGTERM)                  # a graceful stop: calls under way finish
        assert proxy.wait(20) == 0
        at_stop = len(complete(url))
        assert 0 < at_stop < N, "the restart must fall in the middle of the run"
        time.sleep(1.0)                                    # the students' calls find no proxy meanwhile
        assert all(p.poll() is None for p in clients), "a student gave up while the proxy was away"
        proxy, _ = start_proxy(tmp_path, url, port, "second")     # same file, same port
        procs[0] = proxy
        codes = [p.wait(timeout=max(1.0, deadline - time.monotonic())) for p in clients]
        logs = "\n".join((tmp_path / f"client{i}.log").read_text() for i in range(len(STUDENTS)))
        assert codes == [0] * len(STUDENTS), logs
        done = complete(url)
        assert len(done) == N, f"{len(done)} complete trials, {at_stop} at the stop\n{logs}"
        assert len({t.number for t in done}) == N
        assert len({(t.params["x"], t.params["y"]) for t in done}) == N          # N distinct configs
        assert {t.user_attrs.get("student") for t in done} == set(STUDENTS)    # all tagged, every student
        study = optuna.load_study(study_name=STUDY, storage=url)
        stuck = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
        assert not stuck, f"trials left running: {[t.number for t in stuck]}"

        board = C.leaderboard(address, STUDY, top=5)                          # through the proxy
        assert len(board) == 5 and {row["student"] for row in board} <= set(STUDENTS)
        values = [row["val_acc"] for row in board]
        assert values == sorted(values, reverse=True)
        assert values[0] == max(t.value for t in done)
        mine = C.leaderboard(url, STUDY, per_student=True)                     # the file, read directly
        assert sorted(row["student"] for row in mine) == sorted(STUDENTS)
    finally:
        for p in procs:
            stop_process(p)


def test_a_proxy_gone_for_good_is_an_error_naming_it(tmp_path):
    room = C.serve(f"sqlite:///{tmp_path / 'study.db'}", port=0, dashboard_port=None)
    try:
        store = S.open_storage(room.address, reconnect=1)
        optuna.create_study(storage=store, study_name="gone")
        assert S.study_result(optuna.load_study(study_name="gone", storage=store)).trials == []
    finally:
        room.stop()
    with pytest.raises(ConnectionError, match=f"proxy {room.address} did not answer"):
        store.get_all_studies()


LOOPBACK = {"0100007F", "0000000000000000FFFF00000100007F"}     # 127.0.0.1, as IPv4 or IPv4-mapped IPv6


def listening(port: int) -> set[str]:
    """The local addresses (hex, as /proc/net/tcp* writes them) of the sockets listening on `port`."""
    found = set()
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        if os.path.exists(name):
            for line in Path(name).read_text().splitlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:     # 0A: LISTEN
                    found.add(local.rsplit(":", 1)[0])
    return found


def test_the_proxy_listens_on_this_machine_unless_told_to_serve_the_room(tmp_path):
    if not os.path.exists("/proc/net/tcp"):
        pytest.skip("reads the listening sockets from /proc/net/tcp (Linux)")
    url = f"sqlite:///{tmp_path / 'study.db'}"
    room = C.serve(url, port=0, dashboard_port=None)
    try:
        assert room.host == "127.0.0.1" and room.address == f"grpc://127.0.0.1:{room.port}"
        assert listening(room.port) and listening(room.port) <= LOOPBACK         # 127.0.0.1 only
        assert "only this machine can connect" in room.banner() and "WARNING" not in room.banner()
    finally:
        room.stop()
    room = C.serve(url, host=C.ROOM, port=0, dashboard_port=None)
    try:
        assert listening(room.port) & {"00000000", "0" * 32}                   # every interface
        assert "anyone on this network can read and write every trial" in room.banner()
        assert "no authentication" in room.banner()
    finally:
        room.stop()
    assert listening(room.port) == set()


def test_the_dashboard_answers_http(tmp_path):
    pytest.importorskip("optuna_dashboard", reason="optuna-dashboard is not installed")
    room = C.serve(f"sqlite:///{tmp_path / 'study.db'}", port=0, dashboard_port=free_port())
    try:
        assert room.dashboard_url and room.dashboard is not None
        deadline, answer = time.monotonic() + 40, None
        while answer is None:
            try:
                with urllib.request.urlopen(f"{room.dashboard_url}/api/studies", timeout=5) as r:
                    answer = (r.status, r.read())
            except OSError:
                if room.dashboard.poll() is not None or time.monotonic() > deadline:
                    raise
                time.sleep(0.3)
        assert answer[0] == 200 and b"study_summaries" in answer[1]
    finally:
        room.stop()
    assert room.dashboard.poll() is not None                                   # stopped with the proxy


def test_bad_inputs_fail_before_any_trial(tmp_path, capsys):
    calls = []

    def counted(config, budget):
        calls.append(config)
        return objective(config, budget)

    nobody = f"grpc://127.0.0.1:{free_port()}"
    for bad, match in [(dict(port=70000), "port"), (dict(port=True), "port"), (dict(port=-1), "port"),
                       (dict(dashboard_port=1.5), "dashboard_port"), (dict(host=""), "host"),
                       (dict(storage=str(tmp_path / "x.log")), "database URL"), (dict(storage=nobody), "database URL")]:
        with pytest.raises(ValueError, match=match):
            C.serve(**{"port": 0, "dashboard_port": None, **bad})
    assert C.main(["serve", "--port", "70000", "--no-dashboard"]) == 2 and "port" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        C.main(["serve", "--room", "--host", "127.0.0.1"])                     # one or the other
    for name in ["", "   ", "x" * 65, "Ada\nLovelace", "\x1b[31mAda", None, 7]:
        with pytest.raises(ValueError, match="student"):
            C.join(nobody, name)                                               # the name first, no network
    assert C.check_student(" Ada ") == "Ada"
    for url, match in [(nobody, f"cannot reach the storage proxy {nobody}"), ("grpc://127.0.0.1", "no port"),
                       ("grpc://127.0.0.1:99999", "1..65535"), ("grpc://127.0.0.1:80/x?y=1", "HOST:PORT")]:
        with pytest.raises(ValueError, match=match):
            S.open_storage(url)
    with pytest.raises(ValueError, match="cannot reach the storage proxy"):
        C.join(nobody, "Ada")
    for kw, match in [(dict(storage=nobody, study_name="room"), "cannot reach"),
                      (dict(user_attrs={"config": 1}), "mokit records"), (dict(user_attrs={1: "x"}), "user_attrs"),
                      (dict(user_attrs={"student": object()}), "user_attrs"), (dict(user_attrs="Ada"), "user_attrs"),
                      (dict(user_attrs={"note": float("nan")}), "non-finite")]:
        with pytest.raises(ValueError, match=match):
            S.optuna_search(counted, SPACE, budget=1, n_trials=2, **kw)
    with pytest.raises(ValueError, match="top"):
        C.leaderboard(f"sqlite:///{tmp_path / 'x.db'}", top=0)
    assert calls == []


def test_joined_students_each_add_their_own_trials_and_a_rerun_adds_none(tmp_path):
    url = f"sqlite:///{tmp_path / 'class.db'}"
    for name in ("Ada", "Grace", "Ada"):
        S.optuna_search(objective, SPACE, budget=1, n_trials=3, metric="val_acc", sampler="random", seed=None,
                        **C.join(url, name, study_name="class"))
    board = C.leaderboard(url, "class", top=100)
    assert sorted(row["student"] for row in board) == ["Ada"] * 3 + ["Grace"] * 3
    shared = S.optuna_search(objective, SPACE, budget=1, n_trials=3, metric="val_acc", sampler="random",
                             storage=url, study_name="class")             # quota "study": 6 are there already
    assert len(shared.trials) == 6
    with pytest.raises(ValueError, match="quota"):
        S.optuna_search(objective, SPACE, budget=1, n_trials=3, storage=url, study_name="class", quota="each")
    with pytest.raises(ValueError, match="user_attrs"):
        S.optuna_search(objective, SPACE, budget=1, n_trials=3, storage=url, study_name="class", quota="mine")


def test_trials_keep_their_student_and_the_leaderboard_ranks_them(tmp_path):
    url = f"sqlite:///{tmp_path / 'local.db'}"
    for seed, name in enumerate(("Ada", "Grace")):
        r = S.optuna_search(objective, SPACE, budget=1, n_trials=4 * (seed + 1), metric="val_acc", sampler="random",
                            seed=seed, storage=url, study_name="local", user_attrs={"student": name, "group": [1, 2]})
    assert {t.info["student"] for t in r.trials} == {"Ada", "Grace"} and r.trials[0].info["group"] == [1, 2]
    board = C.leaderboard(url, "local", top=3)
    assert [row["rank"] for row in board] == [1, 2, 3] and "student" in str(board) and "config" in board.columns()
    with pytest.raises(ValueError, match=r"no trial .* has metric 'acc'"):
        C.leaderboard(url, "local", metric="acc")
    with pytest.raises(ValueError, match="no study 'nope'"):
        C.leaderboard(url, "nope")
