"""A throwaway PostgreSQL server for tests: initdb in a temp folder, started on a free localhost port.

    server = PgServer()            # initdb + start (as a non-root user when we are root)
    server.url                     # 'postgresql+psycopg2://mokit@127.0.0.1:PORT/postgres'
    server.restart()               # stop (clients' connections drop) and start again, same port and data
    server.close()                 # stop it and remove the folder

Needs Debian's `postgresql` (initdb and pg_ctl on PATH or in /usr/lib/postgresql/*/bin) and psycopg2.
PostgreSQL refuses to run as root: as root the server runs as the `postgres` system user (else `nobody`),
in a folder owned by that user. `require()` says why it cannot run here: a skip, or a failure when
MOKIT_POSTGRES=required (as in CI).
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from mokit.procs import free_port

USER = "mokit"                 # the database superuser initdb creates (trust auth on localhost only)
START_TIMEOUT = 60             # seconds pg_ctl waits for the server to accept connections


def find_binary(name: str) -> str | None:
    """`name` from PATH, else from the newest /usr/lib/postgresql/<version>/bin (Debian keeps it there)."""
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                      key=lambda p: [int(x) if x.isdigit() else 0 for x in Path(p).parts[-3].split(".")])
    return versions[-1] if versions else None


def run_as() -> pwd.struct_passwd | None:
    """The user the server runs as when we are root: `postgres`, else `nobody` (None when not root)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise RuntimeError("running as root, and there is neither a `postgres` nor a `nobody` user to run PostgreSQL as")


def missing() -> str | None:
    """Why a PostgreSQL server cannot be started here (None when it can)."""
    for name in ("initdb", "pg_ctl"):
        if find_binary(name) is None:
            return f"no {name} on PATH or in /usr/lib/postgresql/*/bin (Debian: apt-get install -y postgresql)"
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        return "the psycopg2 package is not installed (pip install psycopg2-binary)"
    if os.geteuid() == 0:
        try:
            run_as()
        except RuntimeError as e:
            return str(e)
    return None


def require() -> None:
    """Skip the test when there is no PostgreSQL here; fail it instead when MOKIT_POSTGRES=required."""
    import pytest

    reason = missing()
    if reason and os.environ.get("MOKIT_POSTGRES") == "required":
        pytest.fail(f"MOKIT_POSTGRES=required but {reason}")
    if reason:
        pytest.skip(reason)


class PgServer:
    """One PostgreSQL cluster in a fresh temp folder, listening on 127.0.0.1 only, until close()."""

    def __init__(self):
        self.initdb, self.pg_ctl = find_binary("initdb"), find_binary("pg_ctl")
        self.user = run_as()
        self.folder = Path(tempfile.mkdtemp(prefix="mokit-pg-"))      # short: the unix socket lives here
        self.data, self.log = self.folder / "data", self.folder / "server.log"
        self.port: int | None = None
        if self.user is not None:
            os.chown(self.folder, self.user.pw_uid, self.user.pw_gid)
        atexit.register(self.close)
        try:
            self._run([self.initdb, "-D", str(self.data), "-U", USER, "--auth=trust", "-E", "UTF8",
                       "--no-sync", "--no-instructions"])
            self.start()
        except BaseException:
            self.close()
            raise

    @property
    def url(self) -> str:
        return f"postgresql+psycopg2://{USER}@127.0.0.1:{self.port}/postgres"

    def _run(self, cmd: list[str], timeout: float = START_TIMEOUT + 30) -> subprocess.CompletedProcess:
        kw = {} if self.user is None else {"user": self.user.pw_uid, "group": self.user.pw_gid, "extra_groups": []}
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=self.folder, **kw)
        if out.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}\n"
                               f"{self.server_log()}")
        return out

    def server_log(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def start(self) -> None:
        """Start the server (on the port it had, once it had one; a free port the first time)."""
        ports = [self.port] if self.port is not None else [free_port() for _ in range(3)]   # one may be taken
        for attempt, port in enumerate(ports):
            options = (f"-p {port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off "
                       f"-c max_connections=50 -c shared_buffers=16MB")
            try:
                self._run([self.pg_ctl, "-D", str(self.data), "-l", str(self.log), "-o", options,
                           "-w", "-t", str(START_TIMEOUT), "start"])
            except RuntimeError:
                if attempt == len(ports) - 1:
                    raise
                continue
            self.port = port
            return

    def stop(self, mode: str = "fast") -> None:
        """Stop the server: 'fast' (clients are disconnected, a clean shutdown) or 'immediate' (a crash)."""
        self._run([self.pg_ctl, "-D", str(self.data), "-m", mode, "-w", "stop"])

    def restart(self, mode: str = "fast", down: float = 0.0) -> None:
        """Stop, stay down `down` seconds (clients meet refused connections), start again on the same port."""
        self.stop(mode)
        time.sleep(down)
        self.start()

    def close(self) -> None:
        """Stop the server if it runs and remove its folder (safe to call twice)."""
        if self.folder.exists() and (self.data / "postmaster.pid").exists():
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                self._run([self.pg_ctl, "-D", str(self.data), "-m", "immediate", "-w", "stop"], timeout=30)
        shutil.rmtree(self.folder, ignore_errors=True)
        atexit.unregister(self.close)
