"""consolidation.lake: the billing store's DuckLake connection.

Real DuckDB with the pinned DuckLake extension, a real SQLite catalog file and, in
the slow test, a real PostgreSQL server (tests/support/postgres.py).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import duckdb
import pytest

from consolidation import lake
from tests.support.postgres import PostgresServer, running_postgres

ROOT = Path(__file__).resolve().parents[2]
META = f"__ducklake_metadata_{lake.ALIAS}"
# Above DuckLake's inlining limit (rows kept in the catalog itself): these reach a Parquet file.
FILE_ROWS = 1000


def _count(db: duckdb.DuckDBPyConnection, table: str = "usage") -> int:
    row = db.execute(f"SELECT count(*) FROM {table}").fetchone()
    assert row is not None
    return int(row[0])


def _write_rows(out: Path, catalog: str = "") -> None:
    db = lake.connect(out, catalog=catalog)
    try:
        db.execute("CREATE TABLE usage (account_id VARCHAR, quantity DECIMAL(38, 9))")
        db.execute(f"INSERT INTO usage SELECT 'acct-' || range, range / 10 FROM range({FILE_ROWS})")
        db.execute("INSERT INTO usage VALUES ('acct-x', 1.5)")
    finally:
        db.close()


def _stored_paths(db: duckdb.DuckDBPyConnection) -> tuple[str, list[tuple[str, bool]]]:
    data_path = db.execute(f"SELECT value FROM {META}.ducklake_metadata WHERE key = 'data_path'").fetchall()
    files = db.execute(f"SELECT path, path_is_relative FROM {META}.ducklake_data_file").fetchall()
    return str(data_path[0][0]), [(str(p), bool(r)) for p, r in files]


def _last_snapshot_time(db: duckdb.DuckDBPyConnection) -> datetime:
    row = db.execute(f"SELECT max(snapshot_time)::TIMESTAMPTZ FROM {META}.ducklake_snapshot").fetchone()
    assert row is not None and isinstance(row[0], datetime)
    return row[0]


def test_sqlite_catalog_stores_the_data_path_relative(tmp_path: Path) -> None:
    out = tmp_path / "out"
    _write_rows(out)
    assert (out / lake.CATALOG_FILE).is_file()
    db = lake.connect(out, read_only=True)
    try:
        data_path, files = _stored_paths(db)
        assert data_path == "data/"
        assert files, "no Parquet file written: the rows stayed inlined in the catalog"
        for path, relative in files:
            assert relative and not path.startswith("/"), path
        assert _count(db) == FILE_ROWS + 1
    finally:
        db.close()
    parquet = list((out / lake.DATA_DIR).rglob("*.parquet"))
    assert len(parquet) == len(files)
    # Nothing in the catalog names the folder it was written in.
    assert str(tmp_path).encode() not in (out / lake.CATALOG_FILE).read_bytes()


def test_a_moved_folder_still_reads_and_writes(tmp_path: Path) -> None:
    out = tmp_path / "out"
    _write_rows(out)
    moved = tmp_path / "elsewhere" / "billing"
    moved.parent.mkdir()
    shutil.move(out, moved)
    db = lake.connect(moved, read_only=True)
    try:
        assert _count(db) == FILE_ROWS + 1
        assert db.execute("SELECT quantity FROM usage WHERE account_id = 'acct-x'").fetchall()[0][0] == 1.5
    finally:
        db.close()
    db = lake.connect(moved)
    try:
        db.execute(f"INSERT INTO usage SELECT 'acct-y', range FROM range({FILE_ROWS})")
        assert _count(db) == 2 * FILE_ROWS + 1
    finally:
        db.close()
    assert not out.exists()
    assert len(list((moved / lake.DATA_DIR).rglob("*.parquet"))) == 2


def test_a_reader_of_a_missing_store_gets_store_missing_and_creates_nothing(tmp_path: Path) -> None:
    out = tmp_path / "nothing-here"
    with pytest.raises(lake.StoreMissingError, match="no billing store"):
        lake.connect(out, read_only=True)
    assert not out.exists()


def test_a_read_only_connection_cannot_write(tmp_path: Path) -> None:
    out = tmp_path / "out"
    _write_rows(out)
    db = lake.connect(out, read_only=True)
    try:
        with pytest.raises(duckdb.Error):
            db.execute("INSERT INTO usage VALUES ('acct-z', 1)")
        assert _count(db) == FILE_ROWS + 1
    finally:
        db.close()


_READER = textwrap.dedent(
    """
    import sys
    from consolidation import lake
    db = lake.connect(sys.argv[1], catalog=sys.argv[2], read_only=True)
    print(db.execute("SELECT count(*), coalesce(sum(quantity), 0) FROM usage").fetchone())
    """
)


def _read_in_another_process(out: Path, catalog: str = "") -> str:
    done = subprocess.run(
        [sys.executable, "-c", _READER, str(out), catalog],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def _check_isolation(out: Path, catalog: str = "") -> None:
    db = lake.connect(out, catalog=catalog)
    try:
        db.execute("CREATE TABLE usage (account_id VARCHAR, quantity DECIMAL(38, 9))")
        db.execute("INSERT INTO usage VALUES ('a', 1), ('b', 2)")
        db.execute("BEGIN TRANSACTION")
        db.execute(f"INSERT INTO usage SELECT 'c', 1 FROM range({FILE_ROWS})")
        db.execute("UPDATE usage SET quantity = 100 WHERE account_id = 'a'")
        # The writer sees its own transaction; another process only what was committed.
        assert _count(db) == FILE_ROWS + 2
        assert _read_in_another_process(out, catalog) == "(2, Decimal('3.000000000'))"
        db.execute("COMMIT")
        everything = f"({FILE_ROWS + 2}, Decimal('{FILE_ROWS + 102}.000000000'))"
        assert _read_in_another_process(out, catalog) == everything
    finally:
        db.close()


def test_another_process_reads_only_committed_rows_while_a_writer_holds_a_transaction(tmp_path: Path) -> None:
    _check_isolation(tmp_path / "out")


_CREATOR = textwrap.dedent(
    """
    import sys
    from consolidation import lake
    db = lake.connect(sys.argv[1], catalog=sys.argv[2])
    meta = "__ducklake_metadata_billing.ducklake_metadata"
    print(db.execute(f"SELECT value FROM {meta} WHERE key = 'data_path'").fetchone()[0])
    """
)


def _create_at_once(out: Path, catalog: str = "") -> None:
    """Two writers start on a store nobody created yet (both replicas of a deployment at once)."""
    command = [sys.executable, "-c", _CREATOR, str(out), catalog]
    writers = [
        subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    for writer in writers:
        stdout, stderr = writer.communicate(timeout=60)
        assert writer.returncode == 0, stderr
        assert stdout.strip() == "data/"


def test_two_writers_create_one_new_store_at_once(tmp_path: Path) -> None:
    for attempt in range(3):
        _create_at_once(tmp_path / f"out{attempt}")


def _check_snapshots(out: Path, catalog: str = "") -> None:
    db = lake.connect(out, catalog=catalog)
    try:
        db.execute("CREATE TABLE usage (account_id VARCHAR, quantity DECIMAL(38, 9))")
        db.execute("INSERT INTO usage VALUES ('a', 1), ('b', 2)")
        first = _last_snapshot_time(db)
        db.execute("UPDATE usage SET quantity = 7 WHERE account_id = 'a'")
        db.execute(f"INSERT INTO usage SELECT 'c', 1 FROM range({FILE_ROWS})")
        second = _last_snapshot_time(db)
        assert second > first
    finally:
        db.close()
    then = lake.connect(out, catalog=catalog, read_only=True, at=first)
    now = lake.connect(out, catalog=catalog, read_only=True)
    try:
        before = then.execute("SELECT account_id, quantity FROM usage ORDER BY 1").fetchall()
        assert before == [("a", 1), ("b", 2)]
        assert _count(now) == FILE_ROWS + 2
        assert now.execute("SELECT quantity FROM usage WHERE account_id = 'a'").fetchall() == [(7,)]
    finally:
        then.close()
        now.close()


def test_at_reads_the_store_as_it_was(tmp_path: Path) -> None:
    _check_snapshots(tmp_path / "out")


# --------------------------------------------------------------------------- PostgreSQL catalog


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    with running_postgres() as server:
        yield server


@pytest.mark.slow
def test_postgres_catalog_creates_writes_and_reads(postgres: PostgresServer, tmp_path: Path) -> None:
    catalog = postgres.create_database("lake_store")
    out = tmp_path / "out"
    assert lake.catalog_uri(out, catalog) == f"ducklake:{catalog}"
    _write_rows(out, catalog)
    assert not (out / lake.CATALOG_FILE).exists(), "the PostgreSQL catalog must not leave a SQLite one"
    db = lake.connect(out, catalog=catalog, read_only=True)
    try:
        data_path, files = _stored_paths(db)
        assert data_path == "data/"
        assert files and all(relative and not path.startswith("/") for path, relative in files), files
        assert _count(db) == FILE_ROWS + 1
    finally:
        db.close()
    assert len(list((out / lake.DATA_DIR).rglob("*.parquet"))) == len(files)
    # Another host mounts the data folder elsewhere: same catalog, its own path.
    mounted = tmp_path / "mnt" / "meterline"
    shutil.copytree(out, mounted)
    db = lake.connect(mounted, catalog=catalog, read_only=True)
    try:
        assert _count(db) == FILE_ROWS + 1
    finally:
        db.close()


@pytest.mark.slow
def test_two_writers_create_one_new_postgres_catalog_at_once(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    for attempt in range(3):
        _create_at_once(tmp_path / f"out{attempt}", postgres.create_database(f"lake_race{attempt}"))


@pytest.mark.slow
def test_postgres_catalog_isolates_readers_and_keeps_snapshots(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    _check_isolation(tmp_path / "isolation", postgres.create_database("lake_isolation"))
    _check_snapshots(tmp_path / "snapshots", postgres.create_database("lake_snapshots"))


def test_a_store_that_cannot_be_opened_says_so_without_the_password(tmp_path: Path) -> None:
    spec = "postgres:dbname=nowhere host=127.0.0.1 port=1 user=meterline password=topsecret"
    with pytest.raises(lake.StoreOpenError) as failed:
        lake.connect(tmp_path, catalog=spec)
    assert "cannot open the billing store" in str(failed.value)
    assert "topsecret" not in str(failed.value) and "password=***" in str(failed.value)
