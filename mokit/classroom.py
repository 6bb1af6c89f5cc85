"""A classroom study: every student's search adds trials to one Optuna study on the instructor's machine.

Instructor: `make classroom` (or `python -m mokit.classroom serve [--room] [--storage URL]`) runs Optuna's
gRPC storage proxy in front of a SQLite file (<runs>/classroom/study.db) or a PostgreSQL URL, and
optuna-dashboard; it prints the address students paste into a notebook's STORAGE knob, and the dashboard's
URL. `python -m mokit.classroom leaderboard` prints the class's best trials and who found them.

Student: `STORAGE = "grpc://HOST:PORT"`, `STUDENT = "Ada"`, then
    search.optuna_search(objective, space, budget=..., n_trials=..., **classroom.join(STORAGE, STUDENT))
(that is storage=STORAGE, study_name="classroom", user_attrs={"student": STUDENT}, quota="mine"): each trial
is tagged with its student, n_trials counts the student's own trials (a rerun adds none once they are
done), and `classroom.leaderboard(STORAGE)` ranks them.

Both servers listen on 127.0.0.1 unless told otherwise: only this machine can connect. --room (or --host
0.0.0.0) serves the room, and then ANYONE who can reach this machine can read and write every trial of the
study, and delete it through the dashboard: no authentication, no encryption. Use it only on a trusted
classroom network, and stop it (Ctrl-C) after class. Finished trials stay in the database; the students'
searches wait (up to search.storage.RECONNECT s) for a proxy restarted on the same port, and go on.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from importlib import import_module

from . import validate
from .files import runs_root
from .procs import free_port, stop_process
from .search import format_config, open_storage, study_result
from .search.storage import describe

STUDY = "classroom"          # the study every student's search joins
PORT, DASHBOARD_PORT = 13000, 8080
ROOM = "0.0.0.0"             # every network interface: the whole room (and anyone else on the network)
MAX_NAME = 64
THREADS = 32                 # proxy threads: calls served at once
_ENV = "MOKIT_CLASSROOM_STORAGE"     # the dashboard child's storage URL (a password stays out of `ps`)


def default_storage() -> str:
    """sqlite:///<runs>/classroom/study.db, its folder made."""
    folder = runs_root() / "classroom"
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'study.db'}"


def check_student(name) -> str:
    """A student's name as trials are tagged with it: a printable string of 1..MAX_NAME characters."""
    if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME or not name.isprintable():
        raise ValueError(f"student must be your name: a printable string of 1 to {MAX_NAME} characters, got {name!r}")
    return name.strip()


def join(storage: str, student: str, *, study_name: str = STUDY) -> dict:
    """optuna_search's keyword arguments that add `student`'s trials to the class study, the proxy checked
    now (unreachable: a ValueError naming it): `search.optuna_search(..., **join(STORAGE, STUDENT))`."""
    name = check_student(student)
    if not isinstance(study_name, str) or not study_name:
        raise ValueError(f"study_name must be a non-empty string, got {study_name!r}")
    if (probe := open_storage(storage)) is not storage and hasattr(probe, "close"):
        probe.close()
    return {"storage": storage, "study_name": study_name, "user_attrs": {"student": name}, "quota": "mine"}


def leaderboard(storage, study_name: str = STUDY, *, metric: str = "val_acc", top: int = 10,
                maximize: bool | None = None, per_student: bool = False):
    """The class's best trials, best first, as a metrics.Table: rank, student, metric, config, trial number.
    maximize=None takes the study's (first) direction; per_student=True keeps each student's best only."""
    import optuna

    from .metrics import Table

    top = validate.integer("top", top, low=1)
    maximize = validate.flag("maximize", maximize, none_ok=True)
    per_student = validate.flag("per_student", per_student)
    store = open_storage(storage)
    try:
        study = optuna.load_study(study_name=study_name, storage=store)
    except KeyError as e:
        raise ValueError(f"no study {study_name!r} in {describe(store)} yet: no student has run a search") from e
    if maximize is None:
        maximize = study.directions[0] == optuna.study.StudyDirection.MAXIMIZE
    ok = [t for t in study_result(study, "classroom", metric, maximize).trials if t.status == "ok"]
    if ok and not any(metric in t.metrics for t in ok):
        raise ValueError(f"no trial of study {study_name!r} has metric {metric!r}; they have "
                         f"{sorted({m for t in ok for m in t.metrics})}")
    ok.sort(key=lambda t: t.value(metric, maximize), reverse=maximize)
    rows, seen = Table(), set()
    for t in ok:
        student = str(t.info.get("student", "?"))
        if len(rows) < top and not (per_student and student in seen):
            rows.append({"rank": len(rows) + 1, "student": student, metric: t.value(metric, maximize),
                         "config": format_config(t.config), "trial": t.info["number"]})
        seen.add(student)
    return rows


def lan_address() -> str:
    """This machine's address on its network, as students' machines reach it (a best guess)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))          # UDP: sends nothing, picks the outgoing interface
            return s.getsockname()[0]
        except OSError:
            return socket.gethostname()


class Classroom:
    """A running proxy (and dashboard): `address` is what students set STORAGE to; stop() ends both."""

    def __init__(self, storage: str, host: str, port: int, server, dashboard: subprocess.Popen | None,
                 dashboard_port: int | None):
        self.storage, self.host, self.port, self.server, self.dashboard = storage, host, port, server, dashboard
        reach = lan_address() if host in (ROOM, "::") else host
        self.address = f"grpc://{reach}:{port}"
        self.dashboard_url = f"http://{reach}:{dashboard_port}" if dashboard is not None else None
        self._stop = weakref.finalize(self, Classroom._halt, server, dashboard)

    @staticmethod
    def _halt(server, dashboard, grace: float = 5.0) -> None:
        server.stop(grace).wait()                     # calls under way finish; new ones are refused
        if dashboard is not None:
            stop_process(dashboard)

    def stop(self) -> None:
        self._stop()

    def banner(self) -> str:
        lines = [f"classroom study {STUDY!r} in {describe(self.storage)}",
                 f"  students set   STORAGE = {self.address!r}",
                 f"  dashboard      {self.dashboard_url or '(none)'}"]
        if self.host == "localhost" or self.host.startswith("127.") or self.host == "::1":
            lines.append(f"  bound to {self.host}: only this machine can connect (serve the room with --room)")
        else:
            lines += [f"  WARNING: bound to {self.host}: anyone on this network can read and write every trial of",
                      "  the study (and delete it through the dashboard). There is no authentication and no",
                      "  encryption: use this only on a trusted classroom network."]
        return "\n".join([*lines, "Ctrl-C stops it; finished trials stay in the database."])


def serve(storage: str | None = None, *, host: str = "127.0.0.1", port: int = PORT,
          dashboard_port: int | None = DASHBOARD_PORT) -> Classroom:
    """Start the gRPC storage proxy on host:port (0: a free port) in front of `storage` (a SQLite or PostgreSQL
    URL; None: default_storage()), and optuna-dashboard on dashboard_port (None: none) in a child process.
    Returns at once; every argument is checked (and the database opened) before anything listens."""
    if not isinstance(host, str) or not host.strip():
        raise ValueError(f"host must be an address to listen on, e.g. 127.0.0.1 or {ROOM}, got {host!r}")
    port = validate.integer("port", port, low=0, high=65535, what="0 picks a free one")
    if dashboard_port is not None:
        dashboard_port = validate.integer("dashboard_port", dashboard_port, low=0, high=65535, what="0: a free one")
    url = default_storage() if storage is None else str(storage)
    if "://" not in url or url.lower().startswith("grpc://"):
        raise ValueError(f"storage {url!r}: the proxy serves a database URL (sqlite:///class.db, "
                         f"postgresql://user:pw@host/db)")
    try:
        import optuna
        from optuna.storages._grpc.auto_generated import api_pb2_grpc  # run_grpc_proxy_server's parts: a server
        from optuna.storages._grpc.servicer import OptunaStorageProxyService  # we hold, to stop it gracefully
        grpc = import_module("grpc")
    except ImportError as e:
        raise ValueError(f"the classroom needs grpcio and Optuna >= 4.2 (pip install 'mokit[scale]'): {e}") from e
    store = optuna.storages.get_storage(open_storage(url))     # cached, as Optuna advises for a proxy
    for study in store.get_all_studies():      # the cache must know every trial under way: after a restart the
        store.get_all_trials(store.get_study_id_from_name(study.study_name), deepcopy=False)   # students go on
    if dashboard_port is not None:
        dashboard_port = dashboard_port or free_port(host)
        try:                                          # in use already? (SO_REUSEADDR: closed ones are not)
            with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind((host, dashboard_port))
        except OSError as e:
            raise ValueError(f"the dashboard cannot listen on {host}:{dashboard_port} ({e}): "
                             f"give another --dashboard-port, or --no-dashboard") from e
    server = grpc.server(ThreadPoolExecutor(max_workers=THREADS), options=[("grpc.so_reuseport", 0)])
    api_pb2_grpc.add_StorageServiceServicer_to_server(OptunaStorageProxyService(store), server)
    try:
        port = server.add_insecure_port(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    except RuntimeError as e:
        raise ValueError(f"the proxy cannot listen on {host}:{port} (in use, or not an address of this machine): "
                         f"give another --port") from e
    server.start()
    dashboard = None
    if dashboard_port is not None:
        (runs_root() / "classroom").mkdir(exist_ok=True)
        log = open(runs_root() / "classroom" / "dashboard.log", "ab")  # noqa: SIM115 - the child keeps its copy
        dashboard = subprocess.Popen([sys.executable, "-m", "mokit.classroom", "dashboard", "--host", host,
                                      "--port", str(dashboard_port), "--parent-pid", str(os.getpid())],
                                     env={**os.environ, _ENV: url}, stdin=subprocess.DEVNULL, stdout=log,
                                     stderr=subprocess.STDOUT)
        log.close()
    return Classroom(url, host, port, server, dashboard, dashboard_port)


def _watch_parent(pid: int, then) -> None:
    def watch():
        while os.getppid() == pid:
            time.sleep(0.5)
        then()
    threading.Thread(target=watch, daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mokit.classroom", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    sv = sub.add_parser("serve", help="run the proxy and the dashboard (until Ctrl-C)")
    sv.add_argument("--storage", default=None, help="a SQLite or PostgreSQL URL (default: <runs>/classroom/study.db)")
    where = sv.add_mutually_exclusive_group()
    where.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine)")
    where.add_argument("--room", action="store_true", help=f"listen on {ROOM}: anyone on the network, no password")
    sv.add_argument("--port", type=int, default=PORT, help=f"the proxy's port (default {PORT}; 0: a free one)")
    sv.add_argument("--dashboard-port", type=int, default=DASHBOARD_PORT, help=f"default {DASHBOARD_PORT}")
    sv.add_argument("--no-dashboard", action="store_true", help="the proxy only")
    sv.add_argument("--parent-pid", type=int, default=None, help=argparse.SUPPRESS)   # exit with it (tests)
    lb = sub.add_parser("leaderboard", help="print the class's best trials")
    lb.add_argument("--storage", default=None, help="grpc://HOST:PORT or a database URL (default: the SQLite file)")
    lb.add_argument("--study", default=STUDY)
    lb.add_argument("--metric", default="val_acc")
    lb.add_argument("--top", type=int, default=10)
    db = sub.add_parser("dashboard", help=argparse.SUPPRESS)     # serve's child: optuna-dashboard on $_ENV
    db.add_argument("--host", default="127.0.0.1")
    db.add_argument("--port", type=int, default=DASHBOARD_PORT)
    db.add_argument("--parent-pid", type=int, default=None)
    args = ap.parse_args(argv)
    if args.command == "dashboard":
        if args.parent_pid is not None:
            _watch_parent(args.parent_pid, lambda: os._exit(0))
        import_module("optuna_dashboard").run_server(os.environ[_ENV], host=args.host, port=args.port)
        return 0
    try:
        if args.command == "leaderboard":
            board = leaderboard(args.storage or default_storage(), args.study, metric=args.metric, top=args.top)
            print(board if board else f"no finished trial with {args.metric!r} yet")
            return 0
        no_dashboard = args.no_dashboard or importlib.util.find_spec("optuna_dashboard") is None
        if no_dashboard and not args.no_dashboard:
            print("optuna-dashboard is not installed (pip install 'mokit[scale]'): serving without it", file=sys.stderr)
        room = serve(args.storage, host=ROOM if args.room else args.host, port=args.port,
                     dashboard_port=None if no_dashboard else args.dashboard_port)
    except ValueError as e:
        print(f"✗ {e}", file=sys.stderr)
        return 2
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    if args.parent_pid is not None:
        _watch_parent(args.parent_pid, done.set)
    print(room.banner(), flush=True)
    while not done.wait(0.5):
        pass
    room.stop()
    print("classroom stopped", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
