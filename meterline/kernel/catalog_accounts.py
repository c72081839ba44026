"""Building a catalog's accounts and their contracts from a schema-valid document,
checking what spans contracts: ids unique across the catalog, no overlapping
contracts, one currency and rounding mode per billing period."""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping, Sequence
from datetime import date
from typing import Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from meterline.kernel.catalog import Account, Address, Buyer, Contract, OneTimeCharge, Plan, Seller
from meterline.kernel.catalog_read import DocPath, format_path
from meterline.kernel.catalog_values import ValueReader

_MAX_NET_TERMS_DAYS: Final = 3650
# Two-letter CLDR territories that are not ISO 3166-1 countries.
_NOT_COUNTRIES: Final = frozenset({"EU", "EZ", "QO", "UN", "XA", "XB", "XK", "ZZ"})


class AccountBuilder(ValueReader):
    """The accounts of one document, whose `plans` are already built."""

    def __init__(
        self, source: str, plans: Mapping[str, Plan], sellers: Sequence[Mapping[str, Any]] = ()
    ) -> None:
        super().__init__(source)
        self.plans = plans
        self.accounts: dict[str, Account] = {}
        # Catalog-wide contract ids, id -> path of its first definition.
        self.contract_paths: dict[str, DocPath] = {}
        self.sellers: dict[str, Seller] = {}
        for index, spec in enumerate(sellers):
            seller = self.seller(("sellers", index), spec)
            self.sellers[seller.id] = seller

    def build(self, specs: Sequence[Mapping[str, Any]]) -> dict[str, Account]:
        for index, spec in enumerate(specs):
            account = self.account(("accounts", index), spec)
            self.accounts[account.id] = account
        return self.accounts

    def account(self, path: DocPath, spec: Mapping[str, Any]) -> Account:
        account_id: str = spec["id"]
        if account_id in self.accounts:
            self.fail((*path, "id"), f"duplicate account id {account_id!r}")
        timezone: str = spec["timezone"]
        try:
            ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError):
            self.fail((*path, "timezone"), f"unknown IANA time zone {timezone!r}")
        tax_rate = spec.get("tax_rate")
        indexed = [
            (index, self.contract((*path, "contracts", index), account_id, contract))
            for index, contract in enumerate(spec["contracts"])
        ]
        indexed.sort(key=lambda item: (item[1].start, item[0]))
        self.check_contract_sequence((*path, "contracts"), indexed)
        return Account(
            id=account_id,
            name=spec.get("name") or account_id,
            timezone=timezone,
            contracts=tuple(contract for _, contract in indexed),
            tax_rate=self.decimal((*path, "tax_rate"), tax_rate, at_most=100)
            if tax_rate is not None
            else None,
            net_terms_days=self.net_terms_days((*path, "net_terms_days"), spec.get("net_terms_days", "30")),
            locale=self.locale((*path, "locale"), spec.get("locale", "en")),
            seller_id=self.seller_ref((*path, "seller"), spec.get("seller")),
            buyer=self.buyer((*path, "buyer"), spec["buyer"]) if "buyer" in spec else None,
        )

    # -- e-invoice parties (docs/catalog.md, "Sellers and buyers")

    def seller(self, path: DocPath, spec: Mapping[str, Any]) -> Seller:
        seller_id: str = spec["id"]
        if seller_id in self.sellers:
            self.fail((*path, "id"), f"duplicate seller id {seller_id!r}")
        address = self.address((*path, "address"), spec["address"])
        return Seller(
            id=seller_id,
            legal_name=spec["legal_name"].strip(),
            address=address,
            vat_id=self.vat_id((*path, "vat_id"), spec["vat_id"]),
            iban=self.iban((*path, "iban"), spec["iban"]),
        )

    def seller_ref(self, path: DocPath, seller_id: str | None) -> str | None:
        if seller_id is not None and seller_id not in self.sellers:
            self.fail(path, f"unknown seller {seller_id!r}")
        return seller_id

    def buyer(self, path: DocPath, spec: Mapping[str, Any]) -> Buyer:
        return Buyer(
            legal_name=spec["legal_name"].strip(),
            address=self.address((*path, "address"), spec["address"]),
            vat_id=self.vat_id((*path, "vat_id"), spec["vat_id"]) if "vat_id" in spec else None,
        )

    def address(self, path: DocPath, spec: Mapping[str, Any]) -> Address:
        postcode = spec.get("postcode")
        return Address(
            lines=tuple(line.strip() for line in spec["lines"]),
            city=spec["city"].strip(),
            country=self.country((*path, "country"), spec["country"]),
            postcode=postcode.strip() if postcode is not None else None,
        )

    def country(self, path: DocPath, code: str) -> str:
        """An ISO 3166-1 alpha-2 code (the schema guarantees two capitals)."""
        from babel import Locale  # as for locales: only catalogs with parties need it

        if code in _NOT_COUNTRIES or code not in Locale("en").territories:
            self.fail(path, f"unknown country code {json.dumps(code)} (ISO 3166-1 alpha-2, e.g. FR, DE, US)")
        return code

    def vat_id(self, path: DocPath, text: str) -> str:
        # Greek VAT ids start with EL, not the country code GR.
        if text[:2] != "EL":
            self.country(path, text[:2])
        return text

    def iban(self, path: DocPath, text: str) -> str:
        """An IBAN whose check digits are right (ISO 13616: mod 97 of the rearranged number is 1)."""
        self.country(path, text[:2])
        rearranged = text[4:] + text[:4]
        number = "".join(str(int(char, 36)) for char in rearranged)
        if int(number) % 97 != 1:
            self.fail(path, f"IBAN {json.dumps(text)} has wrong check digits")
        return text

    def locale(self, path: DocPath, text: str) -> str:
        """A locale Babel knows (`de`, `en_US`, `en-US`), as its canonical name."""
        # Imported here: only catalogs read for invoice pages need Babel's locale data.
        from babel import Locale, UnknownLocaleError

        given = text.replace("-", "_")
        try:
            locale = Locale.parse(given)
        except (UnknownLocaleError, ValueError):
            locale = None
        # Babel maps an unknown region to a likely one (en_ZZ -> en_US): refuse it instead.
        parts = given.split("_")
        region = parts[-1].upper() if len(parts) > 1 and len(parts[-1]) in (2, 3) else None
        if locale is None or (region is not None and locale.territory != region):
            self.fail(path, f"unknown locale {json.dumps(text)} (e.g. en, de, en_US, fr_CH)")
        return str(locale)

    def net_terms_days(self, path: DocPath, text: str) -> int:
        days = int(text)  # the schema guarantees digits
        if days > _MAX_NET_TERMS_DAYS:
            self.fail(path, f"must be at most {_MAX_NET_TERMS_DAYS} days, got {json.dumps(text)}")
        return days

    def contract(self, path: DocPath, account_id: str, spec: Mapping[str, Any]) -> Contract:
        contract_id: str = spec["id"]
        if contract_id in self.contract_paths:
            first = format_path(self.contract_paths[contract_id])
            self.fail((*path, "id"), f"duplicate contract id {contract_id!r} (first defined at {first})")
        self.contract_paths[contract_id] = path
        if spec["plan"] not in self.plans:
            self.fail((*path, "plan"), f"unknown plan {spec['plan']!r}")
        start = self.date((*path, "start"), spec["start"])
        end = self.date((*path, "end"), spec["end"]) if spec.get("end") is not None else None
        if end is not None and end <= start:
            self.fail((*path, "end"), f"must be after start {start.isoformat()} (end is exclusive)")
        discount = spec.get("discount_percent")
        one_time: list[OneTimeCharge] = []
        seen: set[str] = set()
        for index, item in enumerate(spec.get("one_time", ())):
            item_path = (*path, "one_time", index)
            if item["id"] in seen:
                self.fail((*item_path, "id"), f"duplicate one-time charge id {item['id']!r} in contract")
            seen.add(item["id"])
            day = self.date((*item_path, "date"), item["date"])
            if day < start or (end is not None and day >= end):
                self.fail((*item_path, "date"), f"{day.isoformat()} is outside the contract's dates")
            one_time.append(
                OneTimeCharge(
                    id=item["id"],
                    amount=self.decimal((*item_path, "amount"), item["amount"]),
                    date=day,
                    description=item.get("description") or item["id"],
                )
            )
        return Contract(
            id=contract_id,
            account_id=account_id,
            plan_id=spec["plan"],
            start=start,
            end=end,
            discount_percent=(
                self.decimal((*path, "discount_percent"), discount, at_most=100)
                if discount is not None
                else None
            ),
            minimum_commitment=self.optional_decimal(path, spec, "minimum_commitment"),
            one_time=tuple(one_time),
        )

    def check_contract_sequence(self, path: DocPath, indexed: Sequence[tuple[int, Contract]]) -> None:
        """No overlaps; one currency and rounding mode per billing period (invoices are per period)."""
        for (_, previous), (index, contract) in itertools.pairwise(indexed):
            if previous.end is None or previous.end > contract.start:
                self.fail(
                    (*path, index, "start"),
                    f"contract {contract.id!r} overlaps contract {previous.id!r} ({_window_text(previous)})",
                )
        for position, (_, earlier) in enumerate(indexed):
            earlier_plan = self.plans[earlier.plan_id]
            # Last month the contract touches: the month of its last day (end is exclusive).
            last_month = _month_index(date.fromordinal(earlier.end.toordinal() - 1)) if earlier.end else None
            for index, later in indexed[position + 1 :]:
                first_month = _month_index(later.start)
                if last_month is not None and last_month < first_month:
                    continue
                later_plan = self.plans[later.plan_id]
                shared = _month_text(first_month)
                if later_plan.currency != earlier_plan.currency:
                    self.fail(
                        (*path, index, "plan"),
                        f"plan {later_plan.id!r} bills in {later_plan.currency} but contract {earlier.id!r} "
                        f"(plan {earlier_plan.id!r}, {earlier_plan.currency}) shares billing period {shared}",
                    )
                if later_plan.rounding != earlier_plan.rounding:
                    self.fail(
                        (*path, index, "plan"),
                        f"plan {later_plan.id!r} rounds {later_plan.rounding} but contract {earlier.id!r} "
                        f"(plan {earlier_plan.id!r}, {earlier_plan.rounding}) shares billing period {shared}",
                    )


def _month_index(day: date) -> int:
    return day.year * 12 + day.month - 1


def _month_text(index: int) -> str:
    return f"{index // 12:04d}-{index % 12 + 1:02d}"


def _window_text(contract: Contract) -> str:
    return f"{contract.start.isoformat()} to {contract.end.isoformat() if contract.end else 'open end'}"
