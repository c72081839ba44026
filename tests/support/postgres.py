"""A real, throwaway PostgreSQL server for tests of the store's PostgreSQL catalog.

`running_postgres()` finds the server binaries (PATH, then /usr/lib/postgresql/*/bin),
installing the Debian package `postgresql` when they are missing, initdbs a data
directory in a temporary folder, starts the server on a free loopback port with its
unix socket in that folder, and stops it and removes the folder afterwards. PostgreSQL
refuses to run as root, so under root the server runs as the `postgres` user the
package creates. Anything that goes wrong fails the test with the reason: a test that
asked for PostgreSQL never passes without one.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

import pytest

SUPERUSER = "meterline"
SERVER_USER = "postgres"  # created by the Debian package; runs the server when we are root
_START_TRIES = 3


class PostgresServer:
    """A started server: `dsn()` names a database in DuckLake's `postgres:` form."""

    def __init__(self, bin_dir: Path, folder: Path, port: int) -> None:
        self.bin_dir = bin_dir
        self.folder = folder
        self.port = port

    def dsn(self, dbname: str = SUPERUSER) -> str:
        return f"postgres:dbname={dbname} host=127.0.0.1 port={self.port} user={SUPERUSER}"

    def create_database(self, name: str) -> str:
        """A new empty database; returns its DSN."""
        if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
            raise ValueError(f"database name {name!r}: lower-case letters, digits and _ only")
        self.run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", SUPERUSER, name)
        return self.dsn(name)

    def run(self, tool: str, *args: str) -> str:
        return _run(_as_server_user([str(self.bin_dir / tool), *args]))


def _fail(reason: str) -> NoReturn:
    pytest.fail(f"PostgreSQL for tests: {reason}", pytrace=False)


def _run(command: Sequence[str], timeout: float = 120, env: dict[str, str] | None = None) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        _fail(f"{' '.join(command)} failed: {exc}")
    if done.returncode != 0:
        _fail(f"{' '.join(command)} exited {done.returncode}:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return done.stdout


def _as_server_user(command: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return command
    return ["runuser", "-u", SERVER_USER, "--", *command]


def _find_bin_dir() -> Path | None:
    initdb = shutil.which("initdb")
    if initdb is not None:
        found = Path(initdb).resolve().parent
        if (found / "pg_ctl").exists():
            return found
    # Debian keeps the server binaries off PATH, one folder per major version.
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    for folder in reversed(versions):
        if (folder / "initdb").exists() and (folder / "pg_ctl").exists():
            return folder
    return None


def server_binaries() -> Path:
    """The folder of initdb/pg_ctl/createdb, installing PostgreSQL first if needed."""
    found = _find_bin_dir()
    if found is not None:
        return found
    if os.geteuid() != 0:
        _fail("initdb/pg_ctl not found, and only root may install the postgresql package")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    _run(["apt-get", "update"], timeout=600, env=env)
    _run(["apt-get", "install", "-y", "postgresql"], timeout=600, env=env)
    found = _find_bin_dir()
    if found is None:
        _fail("installed the postgresql package but found no initdb")
    return found


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextmanager
def running_postgres() -> Iterator[PostgresServer]:
    bin_dir = server_binaries()
    folder = Path(tempfile.mkdtemp(prefix="meterline-pg-"))
    try:
        if os.geteuid() == 0:
            try:
                server_user = pwd.getpwnam(SERVER_USER)
            except KeyError:
                _fail(f"running as root and there is no user {SERVER_USER!r} to run the server")
            os.chown(folder, server_user.pw_uid, server_user.pw_gid)
        data = folder / "data"
        # trust: the server listens on loopback only and lives as long as the test.
        initdb = [str(bin_dir / "initdb"), "-D", str(data), "-U", SUPERUSER, "-A", "trust"]
        _run(_as_server_user([*initdb, "-E", "UTF8", "--no-sync"]))
        server = _start(bin_dir, folder, data)
        try:
            yield server
        finally:
            subprocess.run(
                _as_server_user([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"]),
                capture_output=True,
                timeout=60,
                check=False,
            )
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _start(bin_dir: Path, folder: Path, data: Path) -> PostgresServer:
    log = folder / "server.log"
    failure = ""
    for _ in range(_START_TRIES):  # another process may take the free port before the server binds it
        port = _free_port()
        options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        pg_ctl = [str(bin_dir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(log)]
        command = _as_server_user([*pg_ctl, "-w", "-t", "60", "start"])
        done = subprocess.run(command, capture_output=True, text=True, timeout=90, check=False)
        if done.returncode == 0:
            server = PostgresServer(bin_dir, folder, port)
            server.create_database(SUPERUSER)
            return server
        failure = done.stdout + done.stderr + (log.read_text() if log.exists() else "")
    _fail(f"the server did not start:\n{failure[-3000:]}")
