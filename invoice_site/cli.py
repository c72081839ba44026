"""`meterline site`: render the invoice site from the billing store, once.

The catalog (names, locales, zones, the terms that explain each line) comes from
`--catalog FILE`, or else from the contracts topic of the configured broker.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from meterline.kernel.catalog import Catalog
from meterline.kernel.command_errors import CommandFailed, UserError

__all__ = ["add_parser", "command"]


def add_parser(sub: Any) -> None:
    """Add `site` to the subcommands of the `meterline` parser."""
    site = sub.add_parser(
        "site",
        help="render the customer invoice site (static HTML) from the billing store",
        description="Write a static invoice site from the billing store in DIR: per account an "
        "index (the open draft as of its time, every final invoice with issue date, due date and "
        "total) and one page per invoice with each line explained, daily usage charts and the "
        "largest rated events. No server needed: open index.html, also from file://.",
    )
    site.add_argument(
        "--out", metavar="DIR", help="output folder holding the store (default ./meterline-out)"
    )
    site.add_argument("--site-dir", metavar="PATH", help="where to write the site (default DIR/site)")
    site.add_argument(
        "--catalog",
        metavar="FILE",
        help="contract catalog (YAML or JSON); without it the catalog is read from the contracts topic",
    )
    site.add_argument(
        "--account", action="append", metavar="ID", help="render only this account (repeatable)"
    )
    site.add_argument(
        "--no-documents",
        action="store_true",
        help="skip the PDF and EN 16931 e-invoice of final invoices (PDFs need the chromium package)",
    )
    site.add_argument("--config", metavar="FILE", help="meterline.toml settings file (env METERLINE_CONFIG)")
    site.add_argument("--bootstrap-servers", metavar="HOST:PORT", help="Kafka bootstrap servers")


def command(args: argparse.Namespace) -> int:
    from consolidation import lake
    from invoice_site.render import render_site
    from meterline.kernel.config import load_settings

    settings = load_settings(args.config).with_overrides(
        out_dir=args.out, bootstrap_servers=args.bootstrap_servers
    )
    out = Path(settings.out_dir)
    site_dir = Path(args.site_dir) if args.site_dir else _configured_site_dir(settings) or out / "site"
    catalog = _catalog(args.catalog, settings)
    try:
        db = lake.connect(out, catalog=settings.store_catalog, read_only=True)
    except lake.StoreMissingError:
        raise UserError(f"{out}: no billing store here; run the pipeline first or pass --out") from None
    except lake.StoreOpenError as exc:
        raise CommandFailed(f"{out}: {exc}") from None
    accounts = None if not args.account else set(args.account)
    try:
        written = render_site(db, catalog, site_dir, accounts)
        documents = [] if args.no_documents else _documents(db, catalog, site_dir, accounts)
    finally:
        db.close()
    print(f"site: {site_dir / 'index.html'} ({len(written)} pages written)")
    if not args.no_documents:
        print(f"documents: {len(documents)} PDF and e-invoice files written")
    return 0


def _documents(db: Any, catalog: Catalog, site_dir: Path, accounts: set[str] | None) -> list[Path]:
    from invoice_site.documents import write_documents
    from invoice_site.einvoice import EInvoiceError
    from invoice_site.pdf import ChromiumMissing, PdfError

    try:
        return write_documents(db, catalog, site_dir, accounts=accounts)
    except ChromiumMissing as exc:
        raise UserError(f"{exc}; or pass --no-documents") from None
    except (PdfError, EInvoiceError) as exc:
        raise CommandFailed(f"invoice documents: {exc}") from None


def _configured_site_dir(settings: Any) -> Path | None:
    # A `site_dir` setting, where the configuration has one.
    configured = getattr(settings, "site_dir", "")
    return Path(configured) if configured else None


def _catalog(path: str | None, settings: Any) -> Catalog:
    if path is not None:
        from meterline.kernel.catalog_file import load_catalog

        return load_catalog(path)
    from confluent_kafka import KafkaException

    from meterline.runtime.tables import CompactedTable, ContractsTable

    topics = settings.topics
    try:
        topic = CompactedTable(
            topics.contracts, settings.bootstrap_servers, settings.kafka, "site", prefix=topics.prefix
        )
        contracts = ContractsTable(topic)
        try:
            contracts.load()
        finally:
            topic.close()
    except (KafkaException, TimeoutError, KeyError) as exc:
        raise CommandFailed(
            f"cannot read the catalog from {topics.contracts} at {settings.bootstrap_servers} ({exc}); "
            "pass --catalog FILE"
        ) from None
    return contracts.catalog
