"""`meterline site` without --catalog reads the catalog from the contracts topic."""

from __future__ import annotations

from pathlib import Path

import pytest

from meterline.app.cli import main
from meterline.app.publish import publish_catalog
from meterline.kernel.config import Settings
from meterline.runtime.broker import EmbeddedBroker
from tests.invoice_site.conftest import CATALOG, Store
from tests.invoice_site.pages import text

pytestmark = pytest.mark.integration


def test_the_catalog_comes_from_the_contracts_topic(
    store: Store, broker: EmbeddedBroker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prefix = "invoice-site."  # topics of their own on the shared broker
    publish_catalog(Settings(bootstrap_servers=broker.bootstrap_servers, topic_prefix=prefix), CATALOG)
    config = tmp_path / "meterline.toml"
    config.write_text(f'bootstrap_servers = "{broker.bootstrap_servers}"\ntopic_prefix = "{prefix}"\n')
    assert main(["site", "--out", str(store.out), "--config", str(config)]) == 0
    assert "(11 pages written)" in capsys.readouterr().out
    # names, locales and terms from the published catalog
    index = text(store.out / "site" / "accounts" / "mueller" / "index.html")
    assert index.startswith("Invoices — Müller GmbH") and "123,16 €" in index


def test_no_broker_is_one_line_and_exit_1(
    store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "meterline.toml"
    config.write_text('bootstrap_servers = "127.0.0.1:9"\n')
    assert main(["site", "--out", str(store.out), "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pass --catalog FILE" in err, err
