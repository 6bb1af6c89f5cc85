"""Where an Optuna study lives: in memory, a journal file (processes on one machine) or a database
server (machines), and how workers on a database survive each other's deaths and the server's restarts.

A database storage gets a heartbeat: each running trial records one every HEARTBEAT seconds; a trial
whose worker died (no heartbeat for GRACE seconds) is marked failed by the next worker that looks and
run again (up to MAX_RETRY times) with the same config. A storage call that loses the server (it
restarted, the network dropped) waits for it and tries again for up to RECONNECT seconds, so a
restart of the server pauses the search instead of ending it.

'grpc://HOST:PORT' is Optuna's gRPC storage proxy (`python -m mokit.classroom serve` runs one in front of
a database): a call that finds the proxy gone waits for it the same way, then fails naming the proxy.
"""

from __future__ import annotations

import os
import re
import socket
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from urllib.parse import urlsplit

from .. import validate

HEARTBEAT = 10           # seconds between a running trial's heartbeats (database storages)
GRACE = 30               # a running trial without a heartbeat for this long has lost its worker
MAX_RETRY = 3            # times a trial that lost its worker is run again
RECONNECT = 120          # seconds a storage call waits for a lost database server to come back
CONNECT_TIMEOUT = 10     # seconds to wait for a database server to answer at all


def masked(url: str) -> str:
    """The URL without its password: 'postgresql://me:***@host/db'."""
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


def is_transient(error: BaseException | None) -> bool:
    """Whether a storage error is the connection to the database, not the request (worth trying again)."""
    import sqlalchemy.exc as sa

    seen: set[int] = set()
    while error is not None and id(error) not in seen:     # Optuna wraps it; a fallback query may chain it
        if isinstance(error, (sa.OperationalError, sa.InterfaceError, sa.DisconnectionError,
                              sa.PendingRollbackError)) or getattr(error, "connection_invalidated", False):
            return True
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return False


def _retrying(method, state: threading.local, transient: Callable[[BaseException], bool],
              gone: Callable[[object, BaseException], BaseException] | None = None):
    """`method`, calling again while it fails with a transient error, for up to its storage's `reconnect`
    seconds; then the error (or gone(storage, error) from it). Nested calls leave the waiting to the outermost."""
    def call(self, *args, **kwargs):
        if getattr(state, "inside", False):
            return method(self, *args, **kwargs)
        state.inside, deadline, pause = True, time.monotonic() + self.reconnect, 0.1
        try:
            while True:
                try:
                    return method(self, *args, **kwargs)
                except Exception as e:
                    if not transient(e):
                        raise
                    if time.monotonic() + pause > deadline:
                        if gone is None:
                            raise
                        raise gone(self, e) from e
                time.sleep(pause)
                pause = min(2 * pause, 2.0)
                if callable(getattr(self, "redial", None)):     # a fresh connection for the next try
                    self.redial()
        finally:
            state.inside = False
    call.__name__, call.__qualname__, call.__doc__ = method.__name__, method.__qualname__, method.__doc__
    return call


def _reconnecting_class():
    import optuna

    class ReconnectingRDBStorage(optuna.storages.RDBStorage):
        """RDBStorage whose calls wait out a lost server (up to `reconnect` seconds) instead of failing."""

        def __init__(self, url: str, *, reconnect: float = RECONNECT, **kwargs):
            self.reconnect = 0.0                          # opening it fails at once: a clear error, no wait
            super().__init__(url, **kwargs)
            self.reconnect = reconnect

    state = threading.local()
    for name, member in vars(optuna.storages.RDBStorage).items():     # every method that may talk to the server
        if callable(member) and not name.startswith(("__", "get_heartbeat")) \
                and not isinstance(member, (staticmethod, classmethod)):
            setattr(ReconnectingRDBStorage, name, _retrying(member, state, is_transient))
    ReconnectingRDBStorage.__module__ = __name__      # pickled by name: found through __getattr__ below
    ReconnectingRDBStorage.__qualname__ = "ReconnectingRDBStorage"
    return ReconnectingRDBStorage


def proxy_lost(error: BaseException | None) -> bool:
    """Whether an error is the gRPC proxy not answering (stopped, restarting, the network dropped): UNAVAILABLE,
    or CANCELLED (a call a stopping proxy took but never ran; a graceful stop lets the running ones finish)."""
    code = getattr(error, "code", None)
    return type(error).__module__.startswith("grpc") and callable(code) and \
        getattr(code(), "name", "") in ("UNAVAILABLE", "CANCELLED")


def _proxy_gone(storage, error: BaseException) -> ConnectionError:
    details = getattr(error, "details", None)
    return ConnectionError(f"the storage proxy {storage.url} did not answer for {storage.reconnect:g} s "
                           f"({details() if callable(details) else error}): is `python -m mokit.classroom serve` "
                           f"still running there, and is this machine on its network?")


def _proxy_class():
    import optuna

    class ReconnectingGrpcStorageProxy(optuna.storages.GrpcStorageProxy):
        """GrpcStorageProxy whose calls wait out a proxy that went away (up to `reconnect` seconds), dialling
        it again on each try, and then fail naming it."""

        def __init__(self, *, host: str, port: int, reconnect: float = RECONNECT):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                super().__init__(host=host, port=port)
            self.url, self.reconnect = f"grpc://{host}:{port}", reconnect

        def redial(self) -> None:
            """A fresh channel (its reconnect backoff reset), as an unpickled copy makes."""
            self.close()
            self.__setstate__(self.__getstate__())

    state = threading.local()
    for name, member in vars(optuna.storages.GrpcStorageProxy).items():
        if callable(member) and not name.startswith("_") and name not in ("wait_server_ready", "close"):
            setattr(ReconnectingGrpcStorageProxy, name, _retrying(member, state, proxy_lost, _proxy_gone))
    ReconnectingGrpcStorageProxy.__module__ = __name__
    ReconnectingGrpcStorageProxy.__qualname__ = "ReconnectingGrpcStorageProxy"
    return ReconnectingGrpcStorageProxy


_BUILDERS = {"ReconnectingRDBStorage": _reconnecting_class, "ReconnectingGrpcStorageProxy": _proxy_class}


def storage_class():
    """ReconnectingRDBStorage, the RDBStorage subclass open_storage makes: built when first needed,
    so that importing mokit.search does not import Optuna."""
    return _built("ReconnectingRDBStorage")


def proxy_class():
    """ReconnectingGrpcStorageProxy, the GrpcStorageProxy subclass open_storage makes for grpc:// (built when
    first needed)."""
    return _built("ReconnectingGrpcStorageProxy")


def _built(name: str):
    if name not in globals():
        globals()[name] = _BUILDERS[name]()
    return globals()[name]


def __getattr__(name: str):
    if name in _BUILDERS:                             # pickle finds the classes by their names here
        return _built(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def open_storage(storage, *, heartbeat: int = HEARTBEAT, grace: int = GRACE, max_retry: int = MAX_RETRY,
                 reconnect: float = RECONNECT, connect_timeout: int = CONNECT_TIMEOUT):
    """None (in memory), a journal file path (*.log / *.journal: processes on one machine), or an
    RDB URL ('sqlite:///x.db', 'postgresql://user:pw@host/db', 'mysql+pymysql://...': machines);
    an Optuna storage is returned as it is.

    A URL gets an RDBStorage with a heartbeat every `heartbeat` s; a trial silent for `grace` s is
    failed and retried up to `max_retry` times; a call that loses the server tries again for
    `reconnect` s. A server that cannot be reached within `connect_timeout` s is a ValueError
    naming the URL (its password masked), raised before any trial runs.

    'grpc://HOST:PORT' is Optuna's gRPC storage proxy (see mokit.classroom): a ReconnectingGrpcStorageProxy,
    whose calls wait up to `reconnect` s for a proxy that went away; one that does not answer within
    `connect_timeout` s now is a ValueError naming it. Heartbeats do not pass through the proxy.
    """
    if storage is None or not isinstance(storage, (str, os.PathLike)):
        return storage
    s = str(storage)
    if s.lower().startswith("grpc://"):
        return _open_proxy(s, reconnect, connect_timeout)
    if "://" in s:
        return _open_rdb(s, heartbeat, grace, max_retry, reconnect, connect_timeout)
    if not s.endswith((".log", ".journal", ".jsonl")):
        raise ValueError(f"storage {s!r}: give a journal file (*.log, *.journal) or an RDB URL "
                         f"(sqlite:///..., postgresql://..., mysql+pymysql://...)")
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    Path(s).parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(s))


def _open_rdb(url: str, heartbeat, grace, max_retry, reconnect, connect_timeout):
    import optuna
    import sqlalchemy.exc as sa

    heartbeat = validate.integer("heartbeat", heartbeat, low=1, what="seconds between heartbeats")
    grace = validate.integer("grace", grace, low=heartbeat + 1, what="seconds, more than heartbeat")
    max_retry = validate.integer("max_retry", max_retry, low=0)
    reconnect = validate.number("reconnect", reconnect, low=0, what="seconds")
    connect_timeout = validate.integer("connect_timeout", connect_timeout, low=1, what="seconds")
    engine: dict[str, object] = {"pool_pre_ping": True}  # a pooled connection the server dropped is replaced
    if url.startswith(("postgresql", "mysql")):
        engine["connect_args"] = {"connect_timeout": connect_timeout}
    for attempt in range(3):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                retry = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None)    # Optuna >= 4.9
                retry = {"heartbeat_stale_trial_callback": retry(max_retry)} if retry else \
                    {"failed_trial_callback": optuna.storages.RetryFailedTrialCallback(max_retry)}
                return storage_class()(url, reconnect=reconnect, engine_kwargs=engine,
                                       heartbeat_interval=heartbeat, grace_period=grace, **retry)
        except (sa.IntegrityError, sa.ProgrammingError) as e:
            if attempt == 2:                               # workers creating the tables at once: try again
                raise ValueError(f"cannot open storage {masked(url)}: {_reason(e)}") from e
            time.sleep(0.5)
        except (ImportError, sa.NoSuchModuleError, sa.ArgumentError) as e:
            raise ValueError(f"cannot open storage {masked(url)}: {_reason(e)} (check the URL's dialect and driver, "
                             f"e.g. postgresql+psycopg2://user@host/db, and that the driver is installed)") from e
        except (sa.SQLAlchemyError, optuna.exceptions.StorageInternalError) as e:
            raise ValueError(f"cannot open storage {masked(url)}: {_reason(e)} (is the database server running and "
                             f"reachable from here, and are the URL's user, password and database right?)") from e
    raise AssertionError("unreachable")


def _open_proxy(url: str, reconnect, connect_timeout):
    reconnect = validate.number("reconnect", reconnect, low=0, what="seconds")
    connect_timeout = validate.integer("connect_timeout", connect_timeout, low=1, what="seconds")
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError as e:                            # a port that is no number, or out of range
        host, port, parts = None, None, None
        why = str(e)
    else:
        why = "it has no port" if port is None else "give only grpc://HOST:PORT"
    if not host or not port or parts is None or parts.path not in ("", "/") or parts.query or parts.username:
        raise ValueError(f"storage {url!r}: give a gRPC storage proxy as grpc://HOST:PORT with a port in "
                         f"1..65535, e.g. grpc://192.168.1.20:13000 ({why})")
    try:
        proxy = proxy_class()(host=host, port=port, reconnect=reconnect)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"storage {url}: the gRPC storage proxy needs grpcio and Optuna >= 4.2 "
                         f"(pip install 'mokit[scale]'): {e}") from e
    try:
        socket.create_connection((host, port), timeout=connect_timeout).close()
        proxy.wait_server_ready(timeout=connect_timeout)
    except (OSError, ConnectionError) as e:
        proxy.close()
        raise ValueError(f"cannot reach the storage proxy {proxy.url} ({e}): is `python -m mokit.classroom serve` "
                         f"running there, with --room when students connect from other machines, and is "
                         f"port {port} open?") from e
    return proxy


def _reason(error: BaseException) -> str:
    """The first line of what the driver said (not SQLAlchemy's links and statements)."""
    inner = getattr(error, "orig", None) or error.__cause__ or error
    text = str(inner).strip().splitlines()
    return masked(text[0] if text else type(inner).__name__)


def heartbeat_of(storage) -> int | None:
    """Seconds between a storage's heartbeats (None: it has none, e.g. a journal file)."""
    get = getattr(storage, "get_heartbeat_interval", None)
    return get() if callable(get) else None


def grace_of(storage) -> float:
    """Seconds a trial of a heartbeat storage may stay silent before it counts as lost."""
    grace = getattr(storage, "grace_period", None)
    return float(grace if grace is not None else 2 * (heartbeat_of(storage) or 0))


def retried_numbers(trials) -> set[int]:
    """Numbers of the trials that lost their worker and were queued again (the retry replaces them)."""
    return {n for t in trials for n in t.system_attrs.get("retry_history", [])}


def fail_lost_trials(study) -> None:
    """Mark the running trials whose worker stopped its heartbeat failed (and queue their retries)."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def describe(storage) -> str:
    """A storage as an error message names it: its path or URL (password masked), or its class."""
    if isinstance(storage, (str, os.PathLike)) or isinstance(getattr(storage, "url", None), str):
        return masked(str(getattr(storage, "url", storage)))
    return type(storage).__name__


def check_directions(study, name: str | None, storage, directions: Sequence[str]) -> None:
    """A study that exists already must optimize the same way: else a ValueError naming it."""
    have = [d.name.lower() for d in study.directions]
    if have != list(directions):
        raise ValueError(f"study {name!r} in storage {describe(storage)} exists with directions {have}, "
                         f"but this search asks for {list(directions)}: give another study_name, or the "
                         f"objectives (maximize / minimize) it was made with")
