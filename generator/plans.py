"""The plans of a generated catalog: SaaS (graduated API calls with included units,
region-filtered storage, volume-priced seats counted as unique active users, SMS
packages, a platform fee) and telecom (voice per started minute with peak/off-peak
and destination prices, SMS packages), one of each per currency, and the meters they
charge.

Prices are written in EUR and scaled exactly to each currency's level: decimal text,
never a float.
"""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any, Final

from meterline.kernel.currency import minor_units

__all__ = ["CURRENCIES", "CURRENCY_WEIGHTS", "amount", "meters", "plans"]

CURRENCIES: Final = ("EUR", "USD", "GBP", "JPY")
CURRENCY_WEIGHTS: Final = (45, 30, 20, 5)
# Price levels per currency; prices are written in EUR and scaled exactly.
_PRICE_SCALE: Final = {"EUR": Decimal(1), "USD": Decimal("1.1"), "GBP": Decimal("0.9"), "JPY": Decimal(150)}
# USD plans round half-up to show both modes; one currency keeps one mode, so a
# plan change within a currency never mixes modes in a period.
_ROUNDING: Final = {"EUR": "half_even", "USD": "half_up", "GBP": "half_even", "JPY": "half_even"}
# Calling codes: a telecom plan's domestic destinations, and the international ones.
_DOMESTIC_PREFIXES: Final = {"EUR": ("33", "49", "34"), "USD": ("1",), "GBP": ("44",), "JPY": ("81",)}
_ALL_PREFIXES: Final = ("1", "33", "34", "44", "49", "61", "64", "81")


def _price(eur_text: str, currency: str) -> str:
    """A unit price written in EUR, scaled exactly to the currency's level."""
    return format((Decimal(eur_text) * _PRICE_SCALE[currency]).normalize(), "f")


def amount(eur_text: str, currency: str) -> str:
    """A money amount scaled to the currency and rounded to its minor units."""
    minor = Decimal(1).scaleb(-minor_units(currency))
    return format((Decimal(eur_text) * _PRICE_SCALE[currency]).quantize(minor, ROUND_HALF_EVEN), "f")


def meters() -> list[dict[str, Any]]:
    return [
        {"code": "api_calls", "unit": "call", "aggregation": "sum"},
        {"code": "storage", "unit": "GB-hour", "aggregation": "sum", "value_property": "gb_hours"},
        {"code": "active_users", "unit": "user", "aggregation": "unique_count", "value_property": "user_id"},
        {"code": "sms", "unit": "message", "aggregation": "count"},
        {"code": "voice", "unit": "minute", "aggregation": "sum", "source_unit": "second"},
    ]


def _saas_pro(currency: str) -> dict[str, Any]:
    c, suffix = currency, currency.lower()
    return {
        "id": f"saas-pro-{suffix}",
        "currency": c,
        "rounding": _ROUNDING[c],
        "charges": [
            {
                "id": f"api-pro-{suffix}",
                "meter": "api_calls",
                "model": "graduated",
                "included": "1000",
                "tiers": [
                    {"up_to": "100000", "unit_price": _price("0.001", c)},
                    {"unit_price": _price("0.0005", c), "flat_fee": _price("5", c)},
                ],
            },
            {
                "id": f"storage-eu-pro-{suffix}",
                "meter": "storage",
                "model": "flat",
                "unit_price": _price("0.02", c),
                "filters": {"attributes": {"region": ["eu-west", "eu-central"]}},
            },
            {
                "id": f"storage-pro-{suffix}",
                "meter": "storage",
                "model": "flat",
                "unit_price": _price("0.025", c),
            },
            {
                "id": f"seats-pro-{suffix}",
                "meter": "active_users",
                "model": "volume",
                "tiers": [
                    {"up_to": "10", "unit_price": _price("8", c)},
                    {"up_to": "50", "unit_price": _price("7", c)},
                    {"unit_price": _price("6", c)},
                ],
            },
            {
                "id": f"sms-pro-{suffix}",
                "meter": "sms",
                "model": "package",
                "package_size": "100",
                "package_price": _price("2", c),
                "included": "50",
            },
        ],
        "recurring": [
            {"id": f"platform-pro-{suffix}", "amount": amount("499", c), "description": "Platform fee"}
        ],
    }


def _saas_starter(currency: str) -> dict[str, Any]:
    c, suffix = currency, currency.lower()
    return {
        "id": f"saas-starter-{suffix}",
        "currency": c,
        "rounding": _ROUNDING[c],
        "charges": [
            {
                "id": f"api-starter-{suffix}",
                "meter": "api_calls",
                "model": "graduated",
                "included": "500",
                "tiers": [
                    {"up_to": "10000", "unit_price": _price("0.002", c)},
                    {"unit_price": _price("0.001", c)},
                ],
            },
            {
                "id": f"storage-starter-{suffix}",
                "meter": "storage",
                "model": "flat",
                "unit_price": _price("0.03", c),
            },
            {
                "id": f"seats-starter-{suffix}",
                "meter": "active_users",
                "model": "flat",
                "unit_price": _price("9", c),
            },
            {
                "id": f"sms-starter-{suffix}",
                "meter": "sms",
                "model": "package",
                "package_size": "100",
                "package_price": _price("2.5", c),
            },
        ],
        "recurring": [
            {"id": f"platform-starter-{suffix}", "amount": amount("49", c), "description": "Platform fee"}
        ],
    }


def _telecom(currency: str) -> dict[str, Any]:
    c, suffix = currency, currency.lower()
    domestic = list(_DOMESTIC_PREFIXES[c])
    international = [prefix for prefix in _ALL_PREFIXES if prefix not in domestic]
    per_started_minute = {"increment": "1", "minimum": "1"}
    return {
        "id": f"telecom-{suffix}",
        "currency": c,
        "rounding": _ROUNDING[c],
        "charges": [
            {
                "id": f"voice-peak-{suffix}",
                "meter": "voice",
                "model": "flat",
                "unit_price": _price("0.05", c),
                "filters": {
                    "destination_prefix": domestic,
                    "local_time": {
                        "days": ["mon", "tue", "wed", "thu", "fri"],
                        "from": "08:00",
                        "to": "20:00",
                    },
                },
                "rounding": per_started_minute,
            },
            {
                "id": f"voice-offpeak-{suffix}",
                "meter": "voice",
                "model": "flat",
                "unit_price": _price("0.02", c),
                "filters": {"destination_prefix": domestic},
                "rounding": per_started_minute,
            },
            {
                "id": f"voice-intl-{suffix}",
                "meter": "voice",
                "model": "flat",
                "unit_price": _price("0.15", c),
                "filters": {"destination_prefix": international},
                "rounding": per_started_minute,
            },
            {
                "id": f"sms-telecom-{suffix}",
                "meter": "sms",
                "model": "package",
                "package_size": "250",
                "package_price": _price("4", c),
                "included": "100",
            },
        ],
        "recurring": [{"id": f"line-{suffix}", "amount": amount("15", c), "description": "Line rental"}],
    }


def plans() -> list[dict[str, Any]]:
    """Every plan: SaaS starter, SaaS pro and telecom, per currency."""
    documents: list[dict[str, Any]] = []
    for currency in CURRENCIES:
        documents += [_saas_starter(currency), _saas_pro(currency), _telecom(currency)]
    return documents
