"""Where an Optuna study lives: in memory, a journal file (processes on one machine) or a database
server (machines), and how workers on a database survive each other's deaths and the server's restarts.

A database storage gets a heartbeat: each running trial records one every HEARTBEAT seconds; a trial
whose worker died (no heartbeat for GRACE seconds) is marked failed by the next worker that looks and
run again (up to MAX_RETRY times) with the same config. A storage call that loses the server (it
restarted, the network dropped) waits for it and tries again for up to RECONNECT seconds, so a
restart of the server pauses the search instead of ending it.
"""

from __future__ import annotations

import os
import re
import threading
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

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


def _reconnecting_class():
    import optuna

    class ReconnectingRDBStorage(optuna.storages.RDBStorage):
        """RDBStorage whose calls wait out a lost server (up to `reconnect` seconds) instead of failing."""

        def __init__(self, url: str, *, reconnect: float = RECONNECT, **kwargs):
            self.reconnect = 0.0                          # opening it fails at once: a clear error, no wait
            super().__init__(url, **kwargs)
            self.reconnect = reconnect

    state = threading.local()

    def again(method):
        def call(self, *args, **kwargs):
            if getattr(state, "inside", False):          # the outermost call does the waiting
                return method(self, *args, **kwargs)
            state.inside, deadline, pause = True, time.monotonic() + self.reconnect, 0.1
            try:
                while True:
                    try:
                        return method(self, *args, **kwargs)
                    except Exception as e:
                        if not is_transient(e) or time.monotonic() + pause > deadline:
                            raise
                    time.sleep(pause)
                    pause = min(2 * pause, 2.0)
            finally:
                state.inside = False
        call.__name__, call.__qualname__, call.__doc__ = method.__name__, method.__qualname__, method.__doc__
        return call

    for name, member in vars(optuna.storages.RDBStorage).items():     # every method that may talk to the server
        if callable(member) and not name.startswith(("__", "get_heartbeat")) \
                and not isinstance(member, (staticmethod, classmethod)):
            setattr(ReconnectingRDBStorage, name, again(member))
    ReconnectingRDBStorage.__module__ = __name__      # pickled by name: found through __getattr__ below
    ReconnectingRDBStorage.__qualname__ = "ReconnectingRDBStorage"
    return ReconnectingRDBStorage


def storage_class():
    """ReconnectingRDBStorage, the RDBStorage subclass open_storage makes: built when first needed,
    so that importing mokit.search does not import Optuna."""
    if "ReconnectingRDBStorage" not in globals():
        globals()["ReconnectingRDBStorage"] = _reconnecting_class()
    return globals()["ReconnectingRDBStorage"]


def __getattr__(name: str):
    if name == "ReconnectingRDBStorage":              # pickle finds the class by its name here
        return storage_class()
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
    """
    if storage is None or not isinstance(storage, (str, os.PathLike)):
        return storage
    s = str(storage)
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
