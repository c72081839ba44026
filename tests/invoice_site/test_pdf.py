"""The PDF of every final invoice: its page printed by headless Chromium (installed with
apt-get when missing; the tests fail, never skip, where it cannot be), with the EN 16931
XML embedded as Factur-X; written once, again only when its page or XML changes."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from pathlib import Path

import facturx
import pytest
from lxml import etree
from pypdf import PdfReader

from invoice_site import pdf
from invoice_site.documents import document_paths, write_documents
from meterline.app.cli import main
from meterline.app.publish import publish_catalog
from meterline.kernel.catalog_file import parse_catalog
from meterline.kernel.config import Settings
from meterline.runtime.broker import EmbeddedBroker
from tests.invoice_site.conftest import Store
from tests.invoice_site.parties import BUYERS, party_document, party_store_in

FINALS = {  # the November invoices of the test store, and their totals as their pages write them
    "mueller": "123,16 €",
    "acme-tel": "$14.90",
    "tanaka": "¥2,202,122",
    "markup": "€1.00",
}


@pytest.fixture(scope="module")
def chromium() -> str:
    return pdf.install_chromium()  # raises ChromiumMissing, saying why, where it cannot


@pytest.fixture
def party_store(tmp_path: Path, chromium: str) -> Iterator[Store]:
    yield from party_store_in(tmp_path)


def _invoice_ids(store: Store) -> dict[str, str]:
    db = store.reader()
    try:
        rows = db.execute(
            "SELECT account_id, invoice_id FROM invoice_drafts WHERE status = 'final'"
        ).fetchall()
    finally:
        db.close()
    return dict(rows)


def _write(store: Store, site: Path, **kwargs: object) -> set[Path]:
    db = store.reader()
    try:
        return set(write_documents(db, store.catalog, site, **kwargs))  # type: ignore[arg-type]
    finally:
        db.close()


def _text(data: bytes) -> str:
    return " ".join(page.extract_text() for page in PdfReader(io.BytesIO(data)).pages).replace("\xa0", " ")


@pytest.mark.slow  # prints with Chromium (installed with apt-get when absent)
def test_every_final_invoice_gets_a_pdf_with_its_einvoice(party_store: Store, tmp_path: Path) -> None:
    site = tmp_path / "site"
    ids = _invoice_ids(party_store)
    assert sorted(ids) == sorted(FINALS)
    written = _write(party_store, site)
    paths = {account: document_paths(site, account, ids[account]) for account in ids}
    assert written == {paths[a][0] for a in FINALS} | {paths[a][1] for a in BUYERS}
    for account, total in FINALS.items():
        pdf_path, xml_path = paths[account]
        data = pdf_path.read_bytes()
        assert data.startswith(b"%PDF-")
        text = _text(data)
        # the whole invoice on paper: the totals column is not cut off
        assert ids[account] in text and f"Total {total.replace(chr(0xA0), ' ')}" in text
        assert "Documents" not in text  # the links are for the screen only
        name, embedded = facturx.get_xml_from_pdf(data, check_xsd=True)
        if account in BUYERS:
            assert name == "factur-x.xml" and embedded == xml_path.read_bytes()
            assert facturx.get_level(etree.fromstring(embedded), "factur-x") == "en16931"
        else:  # markup has no buyer details: a plain PDF, no e-invoice
            assert (name, embedded) == (False, False) and not xml_path.exists()
    # open drafts (December) get no documents
    assert not list(site.rglob("INV-202612-*.pdf")) and not list(site.rglob("INV-202612-*.xml"))


@pytest.mark.slow  # prints with Chromium (installed with apt-get when absent)
def test_documents_are_written_again_only_when_they_change(party_store: Store, tmp_path: Path) -> None:
    site = tmp_path / "site"
    ids = _invoice_ids(party_store)
    _write(party_store, site)
    files = sorted(site.rglob("*.pdf")) + sorted(site.rglob("*.xml"))
    before = {path: (path.read_bytes(), path.stat().st_mtime_ns) for path in files}
    assert _write(party_store, site) == set()
    assert {path: (path.read_bytes(), path.stat().st_mtime_ns) for path in files} == before
    assert not [p for p in site.rglob("*") if ".tmp-" in p.name]

    # the catalog loses mueller's buyer details: its XML goes, its PDF is printed again
    # without one (its page now says why); no other file is touched
    buyers = {k: v for k, v in BUYERS.items() if k != "mueller"}
    party_store.catalog = parse_catalog(party_document(buyers))
    mueller_pdf, mueller_xml = document_paths(site, "mueller", ids["mueller"])
    assert _write(party_store, site) == {mueller_pdf}
    assert not mueller_xml.exists()
    assert facturx.get_xml_from_pdf(mueller_pdf.read_bytes(), check_xsd=False) == (False, False)
    for path, (data, mtime) in before.items():
        if path not in (mueller_pdf, mueller_xml):
            assert (path.read_bytes(), path.stat().st_mtime_ns) == (data, mtime)
    # a subset: only tanaka's documents are looked at
    tanaka_pdf, _ = document_paths(site, "tanaka", ids["tanaka"])
    tanaka_pdf.unlink()
    assert _write(party_store, site, accounts={"tanaka"}) == {tanaka_pdf}
    tanaka_pdf.unlink()
    assert _write(party_store, site, invoice_ids=[ids["tanaka"]]) == {tanaka_pdf}


@pytest.mark.slow  # prints with Chromium (installed with apt-get when absent)
def test_site_command_writes_pages_and_documents(
    party_store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    catalog = tmp_path / "catalog.json"
    catalog.write_text(json.dumps(party_document()))
    assert main(["site", "--out", str(party_store.out), "--catalog", str(catalog)]) == 0
    site = party_store.out / "site"
    assert capsys.readouterr().out == (
        f"site: {site / 'index.html'} (11 pages written)\ndocuments: 7 PDF and e-invoice files written\n"
    )
    assert len(list(site.rglob("*.pdf"))) == 4 and len(list(site.rglob("*.xml"))) == 3
    assert main(["site", "--out", str(party_store.out), "--catalog", str(catalog)]) == 0
    assert capsys.readouterr().out.endswith("documents: 0 PDF and e-invoice files written\n")
    # --no-documents renders the pages only
    elsewhere = tmp_path / "elsewhere"
    argv = ["site", "--out", str(party_store.out), "--catalog", str(catalog), "--site-dir", str(elsewhere)]
    assert main([*argv, "--no-documents"]) == 0
    assert not list(elsewhere.rglob("*.pdf")) and not list(elsewhere.rglob("*.xml"))


def test_without_chromium_and_apt_the_failure_says_what_to_install(
    party_store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A machine without Chromium where apt-get may not run (not root).
    monkeypatch.setattr(pdf, "find_chromium", lambda: None)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(pdf.ChromiumMissing, match="install the Debian package chromium"):
        pdf.install_chromium()
    with pytest.raises(pdf.ChromiumMissing, match="install the Debian package chromium"):
        pdf.PdfPrinter()
    catalog = tmp_path / "catalog.json"
    catalog.write_text(json.dumps(party_document()))
    assert main(["site", "--out", str(party_store.out), "--catalog", str(catalog)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "Chromium is not installed and apt-get cannot run here" in err and "--no-documents" in err
    # the e-invoices were written before the first PDF was needed
    assert len(list((party_store.out / "site").rglob("*.xml"))) >= 1


@pytest.mark.integration
@pytest.mark.slow  # prints with Chromium
def test_sellers_and_buyers_come_through_the_contracts_topic(
    party_store: Store, broker: EmbeddedBroker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """What `make demo` does: the catalog is published, and `meterline site` reads it back."""
    prefix = "einvoice."  # topics of their own on the shared broker
    catalog = tmp_path / "catalog.json"
    catalog.write_text(json.dumps(party_document()))
    publish_catalog(Settings(bootstrap_servers=broker.bootstrap_servers, topic_prefix=prefix), catalog)
    config = tmp_path / "meterline.toml"
    config.write_text(f'bootstrap_servers = "{broker.bootstrap_servers}"\ntopic_prefix = "{prefix}"\n')
    assert main(["site", "--out", str(party_store.out), "--config", str(config)]) == 0
    assert capsys.readouterr().out.endswith("documents: 7 PDF and e-invoice files written\n")
    ids = _invoice_ids(party_store)
    for account in BUYERS:
        pdf_path, xml_path = document_paths(party_store.out / "site", account, ids[account])
        assert facturx.get_xml_from_pdf(pdf_path.read_bytes(), check_xsd=True)[1] == xml_path.read_bytes()


def test_without_pdfs_the_einvoices_are_written_alone(tmp_path: Path) -> None:
    """What the demo does on a machine without Chromium: e-invoices need no browser."""
    for store in party_store_in(tmp_path):
        site = tmp_path / "site"
        written = _write(store, site, pdfs=False)
        assert written and {p.suffix for p in written} == {".xml"}
        assert list(site.rglob("*.pdf")) == []
        assert {p.stem for p in written} <= set(_invoice_ids(store).values())
