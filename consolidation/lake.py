"""The billing store's connection: a DuckLake catalog plus Parquet data files.

DuckLake keeps the tables' metadata (snapshots, file lists, statistics) in a SQL
database, the catalog, and the rows in Parquet files. Every commit is a snapshot:
readers see committed snapshots only and never block writers, several writer
processes commit to the same tables, and any earlier snapshot can be read back
(`at`, draft history).

Where things are, for an output folder DIR:
- the catalog: `DIR/billing.sqlite` (SQLite: several local processes), or a
  PostgreSQL database named by the `store_catalog` setting (`postgres:dbname=...`);
- the data: `DIR/data/`, stored in the catalog as the relative path `data/`, and
  every data file relative to it. Each connection names the folder it was given,
  so DIR can be moved or copied: nothing stores an absolute path.

A plain DuckDB session in the folder above DIR attaches the store read-only with:

    ATTACH 'ducklake:sqlite:meterline-out/billing.sqlite' AS billing
        (READ_ONLY, DATA_PATH 'meterline-out/data/', OVERRIDE_DATA_PATH true);
    USE billing;

The DuckDB extensions come from PyPI packages pinned to DuckDB's exact version
(duckdb-extension-ducklake, -sqlite-scanner, -postgres-scanner); without them (an
image that installs extensions itself) DuckDB's own INSTALL is used.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import os
import re
import sqlite3
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Final

import duckdb

ALIAS: Final = "billing"
CATALOG_FILE: Final = "billing.sqlite"
LOCK_FILE: Final = "billing.sqlite.lock"
DATA_DIR: Final = "data"
# The catalog keeps this, relative: each connection supplies where it is now.
STORED_DATA_PATH: Final = f"{DATA_DIR}/"

# DuckLake's default retry of a conflicting commit waits 100 ms and grows 1.5x: far
# longer than a batch. Writers here retry sooner and more often.
_RETRY_SETTINGS: Final = (
    "SET ducklake_retry_wait_ms = 5",
    "SET ducklake_retry_backoff = 1.3",
    "SET ducklake_max_retry_count = 100",
)

# How long a writer retries attaching a catalog that another writer is creating.
_CREATE_WAIT_S: Final = 10.0

_EXTENSIONS: Final = {
    "ducklake": "duckdb_extension_ducklake",
    "sqlite_scanner": "duckdb_extension_sqlite_scanner",
    "postgres_scanner": "duckdb_extension_postgres_scanner",
}


class StoreMissingError(Exception):
    """A reader asked for a store that does not exist (yet)."""


class StoreOpenError(Exception):
    """The store could not be attached (the message never holds a password)."""


_PASSWORD = re.compile(r"(password\s*=\s*)([^\s\"']+)", re.IGNORECASE)


def _redacted(text: str) -> str:
    """DuckDB repeats the catalog spec in its errors: its password must not reach a log."""
    return _PASSWORD.sub(r"\1***", text)


def load_extensions(db: duckdb.DuckDBPyConnection, names: tuple[str, ...]) -> None:
    for name in names:
        package = importlib.util.find_spec(_EXTENSIONS[name])
        if package is None or package.submodule_search_locations is None:
            db.execute(f"INSTALL {name}")
            db.execute(f"LOAD {name}")
            continue
        folder = Path(next(iter(package.submodule_search_locations)))
        found = sorted(folder.glob(f"extensions/v{duckdb.__version__}/{name}.duckdb_extension"))
        if not found:
            raise RuntimeError(f"{_EXTENSIONS[name]} has no extension for DuckDB {duckdb.__version__}")
        db.execute(f"LOAD '{_sql_text(found[0].as_posix())}'")


def catalog_uri(out: Path, catalog: str = "") -> str:
    """`ducklake:` plus the catalog: the SQLite file in DIR, or the configured database."""
    if catalog:
        return f"ducklake:{catalog}"
    return f"ducklake:sqlite:{(out / CATALOG_FILE).as_posix()}"


def store_exists(out: Path, catalog: str = "") -> bool:
    return bool(catalog) or (out / CATALOG_FILE).exists()


def connect(
    out: str | Path,
    *,
    catalog: str = "",
    read_only: bool = False,
    at: datetime | None = None,
) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with the store attached as `billing` and in use.

    Writers create the store when it does not exist; readers (`read_only`) get
    StoreMissingError instead. `at` reads the snapshot current at that instant.
    """
    folder = Path(out).absolute()
    existed = store_exists(folder, catalog)
    if read_only and not existed:
        raise StoreMissingError(f"{folder} holds no billing store (run the consolidation first)")
    db = duckdb.connect()
    try:
        backend = "postgres_scanner" if catalog.startswith("postgres:") else "sqlite_scanner"
        load_extensions(db, ("ducklake", backend))
        uri = _sql_text(catalog_uri(folder, catalog))
        # A database catalog may be empty: a writer attaches it with the relative path first.
        if not existed or (catalog and not read_only):
            folder.mkdir(parents=True, exist_ok=True)
            # Created with the relative data path, then attached like every later connection;
            # writers creating one SQLite catalog at once take turns.
            with WriterLock(folder, catalog).held():
                _attach_creating(db, f"ATTACH '{uri}' AS {ALIAS} (DATA_PATH '{STORED_DATA_PATH}')")
                db.execute(f"DETACH {ALIAS}")
                if not catalog:
                    _write_ahead_log(folder / CATALOG_FILE)
        options = [f"DATA_PATH '{_sql_text((folder / DATA_DIR).as_posix())}/'", "OVERRIDE_DATA_PATH true"]
        if read_only:
            options.append("READ_ONLY")
        if at is not None:
            options.append(f"SNAPSHOT_TIME '{at.isoformat()}'")
        db.execute(f"ATTACH '{uri}' AS {ALIAS} ({', '.join(options)})")
        db.execute(f"USE {ALIAS}")
        if not read_only:
            for statement in _RETRY_SETTINGS:
                db.execute(statement)
    except duckdb.Error as exc:
        db.close()
        text = _redacted(str(exc))
        if read_only and "explicitly disabled" in text:  # an empty database catalog
            where = catalog_uri(folder, _redacted(catalog))
            raise StoreMissingError(f"{where} holds no billing store") from None
        raise StoreOpenError(f"cannot open the billing store: {text}") from None
    except BaseException:
        db.close()
        raise
    return db


def _attach_creating(db: duckdb.DuckDBPyConnection, attach: str) -> None:
    """Two writers may create one new catalog at once: the loser's CREATEs collide with
    the winner's (PostgreSQL) or find it locked (SQLite); once the winner has committed,
    attaching again finds the catalog."""
    deadline = time.monotonic() + _CREATE_WAIT_S
    while True:
        try:
            db.execute(attach)
            return
        except duckdb.Error:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.05)


def _write_ahead_log(path: Path) -> None:
    """SQLite's WAL journal (kept in the file): readers no longer block the writers'
    commits, nor a commit the readers, as the default rollback journal does."""
    with contextlib.closing(sqlite3.connect(path, timeout=_CREATE_WAIT_S)) as catalog:
        catalog.execute("PRAGMA journal_mode=WAL")


def _sql_text(text: str) -> str:
    return text.replace("'", "''")


class WriterLock:
    """One writer transaction at a time on a SQLite catalog, across processes.

    SQLite lets one connection write at a time, and DuckLake's commit fails with
    "database is locked" (no busy wait, no retry) when another writer's transaction
    began first and commits in between: two workers with overlapping transactions would
    abort each other's batches, and a long one (a close) might never commit. An advisory
    lock on `billing.sqlite.lock`, held from BEGIN to COMMIT, makes them queue instead.
    A database catalog (PostgreSQL) takes concurrent writers: no lock then.
    """

    def __init__(self, out: Path, catalog: str) -> None:
        self._path = None if catalog else out / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        if self._path is None or self._fd is not None:
            return
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)  # waits for the other writer's commit
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        self.acquire()
        try:
            yield
        finally:
            self.release()
