"""`meterline run`'s output folder: earlier outputs refused, or replaced with --overwrite,
never anything that is not meterline's."""

from __future__ import annotations

from pathlib import Path

import pytest

from meterline.app.pipeline import OUTPUTS, OutputExists, earlier_outputs, prepare_out


def _earlier_run(out: Path) -> None:
    (out / "data" / "main" / "rated_usage" / "period=2026-09").mkdir(parents=True)
    (out / "data" / "main" / "rated_usage" / "period=2026-09" / "ducklake-1.parquet").write_bytes(b"PAR1")
    (out / "invoices").mkdir()
    (out / "logs").mkdir()
    (out / "logs" / "mediation.log").write_text("{}")
    (out / "billing.sqlite").write_bytes(b"db")


def test_an_empty_or_new_folder_is_ready(tmp_path: Path) -> None:
    prepare_out(tmp_path / "new" / "out", overwrite=False)
    assert (tmp_path / "new" / "out").is_dir()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "README").write_text("not meterline's")
    prepare_out(tmp_path / "other", overwrite=False)
    assert (tmp_path / "other" / "README").read_text() == "not meterline's"


def test_earlier_outputs_are_refused(tmp_path: Path) -> None:
    _earlier_run(tmp_path)
    with pytest.raises(OutputExists) as refused:
        prepare_out(tmp_path, overwrite=False)
    message = str(refused.value)
    assert "holds the outputs of an earlier run" in message
    assert "billing.sqlite" in message and "--overwrite" in message and "another --out" in message
    assert (tmp_path / "billing.sqlite").exists()


def test_a_lone_database_counts_as_an_earlier_run(tmp_path: Path) -> None:
    (tmp_path / "billing.sqlite").write_bytes(b"db")
    with pytest.raises(OutputExists):
        prepare_out(tmp_path, overwrite=False)


def test_overwrite_removes_only_meterlines_outputs(tmp_path: Path) -> None:
    _earlier_run(tmp_path)
    (tmp_path / "summary.json").write_text("{}")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "data.csv").write_text("a,b")
    elsewhere = tmp_path.parent / f"{tmp_path.name}-linked"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("keep")
    (tmp_path / "site").symlink_to(elsewhere, target_is_directory=True)
    prepare_out(tmp_path, overwrite=True)
    assert earlier_outputs(tmp_path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "summary.json"]
    assert (elsewhere / "keep.txt").read_text() == "keep"  # a link is removed, never followed


def test_out_that_is_a_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "out"
    path.write_text("x")
    with pytest.raises(OutputExists, match="not a directory"):
        prepare_out(path, overwrite=True)


def test_outputs_name_what_the_store_writes() -> None:
    assert {"billing.sqlite", "billing.sqlite-wal", "data", "invoices", "logs"} <= set(OUTPUTS)
