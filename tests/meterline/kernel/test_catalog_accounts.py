"""An account's optional `locale`: how its invoice pages write amounts and dates."""

from __future__ import annotations

from typing import Any

import pytest

from meterline.kernel.catalog_file import CatalogError, parse_catalog


def document(**account: Any) -> dict[str, Any]:
    return {
        "meters": [],
        "plans": [],
        "accounts": [{"id": "a", "timezone": "UTC", "contracts": [], **account}],
    }


def test_locale_defaults_to_en() -> None:
    assert parse_catalog(document()).accounts["a"].locale == "en"


@pytest.mark.parametrize(("given", "kept"), [("de", "de"), ("en_US", "en_US"), ("fr-CH", "fr_CH")])
def test_locale_is_kept_as_its_canonical_name(given: str, kept: str) -> None:
    assert parse_catalog(document(locale=given)).accounts["a"].locale == kept


@pytest.mark.parametrize(
    ("given", "problem"),
    [
        ("xx", 'unknown locale "xx"'),
        ("en_ZZ", 'unknown locale "en_ZZ"'),
        ("123", "must be a locale such as en, de or en_US"),
        ("", "must be a locale such as en, de or en_US"),
    ],
)
def test_unknown_locales_are_refused(given: str, problem: str) -> None:
    with pytest.raises(CatalogError) as error:
        parse_catalog(document(locale=given))
    assert error.value.path == "accounts[0].locale"
    assert problem in error.value.problem
