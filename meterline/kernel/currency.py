"""ISO 4217 currencies and their minor units: the one table meterline uses.

The catalog validator rejects a plan whose currency is not here, and invoice
assembly rounds each line to the currency's minor units, so a catalog that
validates can always be invoiced.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

__all__ = ["MINOR_UNITS", "UnknownCurrencyError", "is_currency", "minor_units"]


class UnknownCurrencyError(ValueError):
    """A currency code that is not an active ISO 4217 code with minor units.

    Raised instead of guessing two decimals: an invoice in an unknown currency
    would be rounded wrongly, silently.
    """

    def __init__(self, currency: str) -> None:
        super().__init__(f"unknown currency {currency!r}: not an ISO 4217 code with minor units")
        self.currency = currency


_ZERO_DECIMALS = "BIF CLP DJF GNF ISK JPY KMF KRW PYG RWF UGX UYI VND VUV XAF XOF XPF"
_THREE_DECIMALS = "BHD IQD JOD KWD LYD OMR TND"
_FOUR_DECIMALS = "CLF UYW"
_TWO_DECIMALS = (
    "AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BMD BND BOB BOV BRL BSD BTN BWP "
    "BYN BZD CAD CDF CHE CHF CHW CNY COP COU CRC CUP CVE CZK DKK DOP DZD EGP ERN ETB EUR FJD "
    "FKP GBP GEL GHS GIP GMD GTQ GYD HKD HNL HTG HUF IDR ILS INR IRR JMD KES KGS KHR KPW KYD "
    "KZT LAK LBP LKR LRD LSL MAD MDL MGA MKD MMK MNT MOP MRU MUR MVR MWK MXN MXV MYR MZN NAD "
    "NGN NIO NOK NPR NZD PAB PEN PGK PHP PKR PLN QAR RON RSD RUB SAR SBD SCR SDG SEK SGD SHP "
    "SLE SOS SRD SSP STN SVC SYP SZL THB TJS TMT TOP TRY TTD TWD TZS UAH USD USN UYU UZS VED "
    "VES WST XCD XCG YER ZAR ZMW ZWG"
)

# Active ISO 4217 codes -> number of decimals of their minor unit. Codes with no
# minor unit in the standard (precious metals such as XAU, XDR, test codes) are
# left out on purpose: nothing can be invoiced in them.
MINOR_UNITS: Mapping[str, int] = MappingProxyType(
    {
        **dict.fromkeys(_TWO_DECIMALS.split(), 2),
        **dict.fromkeys(_ZERO_DECIMALS.split(), 0),
        **dict.fromkeys(_THREE_DECIMALS.split(), 3),
        **dict.fromkeys(_FOUR_DECIMALS.split(), 4),
    }
)


def is_currency(code: str) -> bool:
    """True for an ISO 4217 code meterline can invoice in (upper case, as catalogs write it)."""
    return code in MINOR_UNITS


def minor_units(currency: str) -> int:
    """Decimals of the currency's minor unit (EUR 2, JPY 0, BHD 3); raises UnknownCurrencyError."""
    try:
        return MINOR_UNITS[currency.upper()]
    except KeyError:
        raise UnknownCurrencyError(currency) from None
