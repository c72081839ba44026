"""`meterline site` from the command line: the site from a store and a catalog file;
one clear line and exit 2 for a folder without a store."""

from __future__ import annotations

from pathlib import Path

import pytest

from meterline.app.cli import main
from tests.invoice_site.conftest import CATALOG, Store


def test_site_command_writes_the_site(
    store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Without the PDFs and e-invoices (Chromium): test_pdf makes them.
    assert main(["site", "--out", str(store.out), "--catalog", str(CATALOG), "--no-documents"]) == 0
    assert capsys.readouterr().out == f"site: {store.out / 'site' / 'index.html'} (11 pages written)\n"
    assert (store.out / "site" / "accounts" / "tanaka" / "index.html").is_file()

    elsewhere = tmp_path / "elsewhere"
    argv = [
        "site",
        "--out",
        str(store.out),
        "--catalog",
        str(CATALOG),
        "--site-dir",
        str(elsewhere),
        "--no-documents",
    ]
    assert main([*argv, "--account", "tanaka"]) == 0
    assert "(4 pages written)" in capsys.readouterr().out
    assert sorted(p.name for p in (elsewhere / "accounts").iterdir()) == ["tanaka"]


def test_no_store_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["site", "--out", str(tmp_path / "none"), "--catalog", str(CATALOG)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no billing store here" in err


def test_bad_catalog_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "catalog.yaml"
    bad.write_text(CATALOG.read_text().replace("locale: de", "locale: xx"))
    assert main(["site", "--out", str(tmp_path), "--catalog", str(bad)]) == 2
    assert capsys.readouterr().err == (
        'meterline: error: catalog.yaml: accounts[0].locale: unknown locale "xx" '
        "(e.g. en, de, en_US, fr_CH)\n"
    )


def test_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["site", "--help"])
    assert exit_info.value.code == 0
    assert "--site-dir PATH" in capsys.readouterr().out
