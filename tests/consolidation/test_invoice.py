"""Invoice assembly (docs/catalog.md), with expected lines computed by hand."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from consolidation.currency import UnknownCurrencyError, minor_units
from consolidation.invoice import (
    InvoiceAssemblyError,
    InvoiceDraft,
    UsageTotal,
    assemble_invoice,
)
from meterline.kernel.catalog import (
    Account,
    Catalog,
    Charge,
    Contract,
    Meter,
    OneTimeCharge,
    Plan,
    RecurringFee,
    RoundingMode,
    Tier,
)
from meterline.kernel.records import invoice_id_for

D = Decimal

# --- catalog builders -------------------------------------------------------

METERS = {
    m.code: m
    for m in (
        Meter("api_calls", "call", "sum"),
        Meter("storage", "GB-hour", "sum", value_property="gb_hours"),
        Meter("active_users", "user", "unique_count", value_property="user_id"),
        Meter("sms", "message", "count"),
    )
}

API = Charge("api", "api_calls", "flat", unit_price=D("0.001"), description="API calls")
STORAGE = Charge("storage", "storage", "flat", unit_price=D("0.02"))
SEATS = Charge("seats", "active_users", "volume", tiers=(Tier(D("10"), D("8")), Tier(None, D("6"))))
SMS = Charge("sms", "sms", "flat", unit_price=D("0.05"), description="SMS")
PLATFORM = RecurringFee("platform", D("499.00"), "Platform fee")


def plan(
    plan_id: str,
    *charges: Charge,
    recurring: Sequence[RecurringFee] = (),
    currency: str = "EUR",
    rounding: RoundingMode = "half_even",
) -> Plan:
    return Plan(plan_id, currency, rounding, tuple(charges), tuple(recurring))


def contract(
    contract_id: str,
    plan_id: str,
    start: str,
    end: str | None = None,
    *,
    discount: str | None = None,
    minimum: str | None = None,
    one_time: Sequence[OneTimeCharge] = (),
    account_id: str = "acme",
) -> Contract:
    return Contract(
        id=contract_id,
        account_id=account_id,
        plan_id=plan_id,
        start=date.fromisoformat(start),
        end=None if end is None else date.fromisoformat(end),
        discount_percent=None if discount is None else D(discount),
        minimum_commitment=None if minimum is None else D(minimum),
        one_time=tuple(one_time),
    )


def account(
    *contracts: Contract,
    account_id: str = "acme",
    timezone: str = "Europe/Paris",
    tax_rate: str | None = None,
    net_terms_days: int = 30,
) -> Account:
    return Account(
        id=account_id,
        name=account_id.upper(),
        timezone=timezone,
        contracts=contracts,
        tax_rate=None if tax_rate is None else D(tax_rate),
        net_terms_days=net_terms_days,
    )


def catalog(*plans: Plan, accounts: Sequence[Account] = ()) -> Catalog:
    return Catalog(meters=METERS, plans={p.id: p for p in plans}, accounts={a.id: a for a in accounts})


def total(
    charge: Charge,
    aggregate: str,
    amount_exact: str,
    *,
    contract_id: str,
    period: str,
    events: int = 1,
    account_id: str = "acme",
) -> UsageTotal:
    return UsageTotal(
        account_id=account_id,
        period=period,
        contract_id=contract_id,
        charge_id=charge.id,
        meter=charge.meter,
        aggregate=D(aggregate),
        amount_exact=D(amount_exact),
        event_count=events,
    )


def assemble(
    acct: Account, cat: Catalog, period: str, usage: Sequence[UsageTotal] = (), status: str = "open"
) -> InvoiceDraft:
    draft = assemble_invoice(acct, cat, period, usage, status)
    assert draft is not None
    return draft


def summary(draft: InvoiceDraft) -> list[tuple[int, str, str | None, str]]:
    """(line_no, kind, charge_id, amount as text): the amount's exponent is checked too."""
    return [(line.line_no, line.kind, line.charge_id, str(line.amount)) for line in draft.lines]


def check_sums(draft: InvoiceDraft) -> None:
    """The draft's own arithmetic: subtotal = lines 1–4, total = all lines."""
    before_discount = {"usage", "minimum_commitment", "recurring", "one_time"}
    assert draft.subtotal == sum(line.amount for line in draft.lines if line.kind in before_discount)
    assert draft.discount == sum(line.amount for line in draft.lines if line.kind == "discount")
    assert draft.tax == sum(line.amount for line in draft.lines if line.kind == "tax")
    assert draft.total == sum(line.amount for line in draft.lines)
    assert draft.total == draft.subtotal + draft.discount + draft.tax
    assert draft.discount <= 0
    assert [line.line_no for line in draft.lines] == list(range(1, len(draft.lines) + 1))


# --- scenarios ---------------------------------------------------------------


def test_contract_starting_on_the_17th_prorates_the_recurring_fee() -> None:
    saas = plan("saas", STORAGE, recurring=[PLATFORM])
    acct = account(contract("c1", "saas", "2026-03-17"))
    usage = [total(STORAGE, "1234.5", "24.690", contract_id="c1", period="2026-03", events=40)]

    draft = assemble(acct, catalog(saas), "2026-03", usage)

    # March has 31 days; the contract is in effect 17..31 = 15 of them.
    # 1 usage     storage 1234.5 GB-hour × 0.02 = 24.69
    # 2 recurring platform 499.00 × 15 / 31 = 241.451612… -> 241.45
    # total 266.14
    assert summary(draft) == [
        (1, "usage", "storage", "24.69"),
        (2, "recurring", "platform", "241.45"),
    ]
    usage_line, fee_line = draft.lines
    assert usage_line.quantity == D("1234.5")
    assert usage_line.unit == "GB-hour"
    assert usage_line.unit_price == D("0.02")
    assert usage_line.description == "storage usage"  # the charge has no description
    assert fee_line.description == "Platform fee (15/31 days)"
    assert fee_line.quantity is None and fee_line.unit is None and fee_line.unit_price is None
    assert (draft.subtotal, draft.discount, draft.tax, draft.total) == (
        D("266.14"),
        D("0"),
        D("0"),
        D("266.14"),
    )
    assert draft.period_start == date(2026, 3, 1)
    assert draft.period_end == date(2026, 3, 31)
    assert draft.issue_date == date(2026, 4, 1)
    assert draft.due_date == date(2026, 5, 1)  # 1 April + 30 days
    assert draft.event_count == 40
    assert draft.invoice_id == invoice_id_for("acme", "2026-03")
    assert draft.currency == "EUR"
    assert draft.status == "open"
    check_sums(draft)


def test_contract_change_mid_month_gives_one_invoice() -> None:
    api_basic = Charge("api-basic", "api_calls", "flat", unit_price=D("0.002"), description="API (basic)")
    api_pro = Charge(
        "api-pro",
        "api_calls",
        "graduated",
        tiers=(Tier(D("100000"), D("0.001")), Tier(None, D("0.0005"))),
        description="API (pro)",
    )
    storage_pro = Charge("storage-pro", "storage", "flat", unit_price=D("0.02"))
    basic = plan("basic", api_basic, recurring=[RecurringFee("basic-fee", D("90.00"), "Basic plan")])
    pro = plan("pro", api_pro, storage_pro, recurring=[RecurringFee("pro-fee", D("300.00"), "Pro plan")])
    acct = account(
        contract("old", "basic", "2026-01-01", "2026-04-10", discount="10", minimum="500"),
        contract("new", "pro", "2026-04-10", discount="5", minimum="100"),
    )
    # Given in no particular order: lines follow contracts, then plan charge order.
    usage = [
        total(storage_pro, "100.5", "2.01", contract_id="new", period="2026-04", events=7),
        total(api_pro, "50000", "45.5", contract_id="new", period="2026-04", events=500),
        total(api_basic, "10000", "20.000", contract_id="old", period="2026-04", events=100),
    ]

    draft = assemble(acct, catalog(basic, pro), "2026-04", usage)

    # April has 30 days: "old" in effect 1..9 (9 days), "new" 10..30 (21 days).
    # "new" is in effect on 30 April, so its minimum (100) and discount (5%) apply.
    # 1 usage      api-basic   10000 × 0.002          =  20.00
    # 2 usage      api-pro     (graduated, given)     =  45.50
    # 3 usage      storage-pro 100.5 × 0.02           =   2.01
    #   usage sum 67.51 < 100 ->
    # 4 minimum    100 - 67.51                        =  32.49
    # 5 recurring  basic-fee 90.00 × 9 / 30           =  27.00
    # 6 recurring  pro-fee 300.00 × 21 / 30           = 210.00
    #   S = 67.51 + 32.49 + 27.00 + 210.00            = 337.00
    # 7 discount   -(337.00 × 5 / 100) = -16.85
    #   total 320.15 (no tax rate)
    assert summary(draft) == [
        (1, "usage", "api-basic", "20.00"),
        (2, "usage", "api-pro", "45.50"),
        (3, "usage", "storage-pro", "2.01"),
        (4, "minimum_commitment", None, "32.49"),
        (5, "recurring", "basic-fee", "27.00"),
        (6, "recurring", "pro-fee", "210.00"),
        (7, "discount", None, "-16.85"),
    ]
    assert draft.lines[0].unit_price == D("0.002")
    assert draft.lines[1].unit_price is None  # graduated: no single unit price
    assert draft.lines[4].description == "Basic plan (9/30 days)"
    assert draft.lines[5].description == "Pro plan (21/30 days)"
    assert (draft.subtotal, draft.discount, draft.total) == (D("337.00"), D("-16.85"), D("320.15"))
    assert draft.event_count == 607
    check_sums(draft)


def test_same_plan_on_both_contracts_bills_per_contract() -> None:
    saas = plan("saas", API, STORAGE, recurring=[PLATFORM])
    acct = account(
        contract("c1", "saas", "2026-01-01", "2026-04-10"),
        contract("c2", "saas", "2026-04-10", discount="10"),
    )
    # Totals are per contract and charge: api was used under both contracts.
    usage = [
        total(API, "3000", "3", contract_id="c2", period="2026-04"),
        total(STORAGE, "10", "0.2", contract_id="c1", period="2026-04"),
        total(API, "2000", "2", contract_id="c1", period="2026-04"),
    ]

    draft = assemble(acct, catalog(saas), "2026-04", usage)

    # 1 usage     api (c1)  2000 × 0.001    =   2.00
    # 2 usage     storage (c1) 10 × 0.02    =   0.20
    # 3 usage     api (c2)  3000 × 0.001    =   3.00
    # 4 recurring platform 499 × 9 / 30     = 149.70
    # 5 recurring platform 499 × 21 / 30    = 349.30   (the two parts make 499.00)
    #   S = 504.20
    # 6 discount  -(504.20 × 10%)           = -50.42   (c2 is in effect on the last day)
    #   total 453.78
    assert summary(draft) == [
        (1, "usage", "api", "2.00"),
        (2, "usage", "storage", "0.20"),
        (3, "usage", "api", "3.00"),
        (4, "recurring", "platform", "149.70"),
        (5, "recurring", "platform", "349.30"),
        (6, "discount", None, "-50.42"),
    ]
    assert draft.total == D("453.78")
    check_sums(draft)


def test_terms_of_the_latest_contract_when_none_is_in_effect_on_the_last_day() -> None:
    saas = plan("saas", recurring=[RecurringFee("fee", D("300.00"), "Fee")])
    acct = account(
        contract("c1", "saas", "2026-01-01", "2026-04-10", discount="50"),
        contract("c2", "saas", "2026-04-10", "2026-04-20", discount="10"),
    )

    draft = assemble(acct, catalog(saas), "2026-04")

    # 1 recurring 300 × 9 / 30  = 90.00
    # 2 recurring 300 × 10 / 30 = 100.00
    #   S = 190.00; c2 started last: -(190.00 × 10%) = -19.00
    assert summary(draft) == [
        (1, "recurring", "fee", "90.00"),
        (2, "recurring", "fee", "100.00"),
        (3, "discount", None, "-19.00"),
    ]
    assert draft.total == D("171.00")


def test_minimum_commitment_true_up() -> None:
    saas = plan("saas", API)
    acct = account(contract("c1", "saas", "2026-01-01", minimum="1000.00"))
    usage = [total(API, "812345", "812.345", contract_id="c1", period="2026-02", events=3)]

    draft = assemble(acct, catalog(saas), "2026-02", usage)

    # 1 usage    812.345 -> 812.34 (half_even tie, 4 is even)
    # 2 minimum  1000.00 - 812.34 = 187.66; total 1000.00
    assert summary(draft) == [
        (1, "usage", "api", "812.34"),
        (2, "minimum_commitment", None, "187.66"),
    ]
    assert draft.lines[1].description == "Minimum commitment 1000.00 EUR"
    assert draft.total == D("1000.00")
    check_sums(draft)


@pytest.mark.parametrize("amount_exact", ["1000.00", "1000.004", "1500"])
def test_no_minimum_line_when_usage_reaches_the_minimum(amount_exact: str) -> None:
    saas = plan("saas", API)
    acct = account(contract("c1", "saas", "2026-01-01", minimum="1000.00"))
    usage = [total(API, "1", amount_exact, contract_id="c1", period="2026-02")]

    draft = assemble(acct, catalog(saas), "2026-02", usage)

    assert [line.kind for line in draft.lines] == ["usage"]


def test_one_time_items_dated_in_the_period() -> None:
    saas = plan("saas", recurring=[PLATFORM])
    acct = account(
        contract(
            "c1",
            "saas",
            "2026-01-01",
            one_time=[
                OneTimeCharge("router", D("149.00"), date(2026, 11, 15), "Router"),
                OneTimeCharge("install", D("50"), date(2026, 12, 1), "Installation"),  # next period
                OneTimeCharge("sim", D("4.995"), date(2026, 11, 30), "SIM card"),
            ],
        )
    )

    draft = assemble(acct, catalog(saas), "2026-11")

    # 1 recurring platform 499.00 (full month)
    # 2 one_time  router   149.00
    # 3 one_time  sim      4.995 -> 5.00 (a tie: half_even picks the even 5.00 over 4.99)
    #   total 653.00
    assert summary(draft) == [
        (1, "recurring", "platform", "499.00"),
        (2, "one_time", "router", "149.00"),
        (3, "one_time", "sim", "5.00"),
    ]
    assert draft.lines[1].description == "Router"
    assert draft.total == D("653.00")
    assert draft.event_count == 0


def test_one_time_charge_alone_makes_a_draft() -> None:
    # The contract ended on 1 November; its return fee is dated later in November.
    saas = plan("saas", API, recurring=[PLATFORM])
    acct = account(
        contract(
            "c1",
            "saas",
            "2026-01-01",
            "2026-11-01",
            discount="10",
            one_time=[OneTimeCharge("return", D("20"), date(2026, 11, 20), "Equipment return")],
        )
    )

    draft = assemble(acct, catalog(saas), "2026-11")

    # 1 one_time return 20.00; discount -(20.00 × 10%) = -2.00; no recurring (not in effect)
    assert summary(draft) == [(1, "one_time", "return", "20.00"), (2, "discount", None, "-2.00")]


def test_discount_and_tax() -> None:
    saas = plan("saas", API, recurring=[PLATFORM])
    acct = account(
        contract(
            "c1",
            "saas",
            "2026-01-01",
            discount="5",
            minimum="1000.00",
            one_time=[OneTimeCharge("router", D("149.00"), date(2026, 11, 15), "Router")],
        ),
        tax_rate="20",
        net_terms_days=45,
    )
    usage = [total(API, "1234567", "1234.567", contract_id="c1", period="2026-11", events=9)]

    draft = assemble(acct, catalog(saas), "2026-11", usage, status="final")

    # 1 usage     1234.567 -> 1234.57 (1234.57 >= 1000: no minimum line)
    # 2 recurring  499.00
    # 3 one_time   149.00
    #   S = 1882.57
    # 4 discount  -(1882.57 × 5 / 100 = 94.1285 -> 94.13) = -94.13
    #   T = 1788.44
    # 5 tax        1788.44 × 20 / 100 = 357.688 -> 357.69
    #   total = 1788.44 + 357.69 = 2146.13
    assert summary(draft) == [
        (1, "usage", "api", "1234.57"),
        (2, "recurring", "platform", "499.00"),
        (3, "one_time", "router", "149.00"),
        (4, "discount", None, "-94.13"),
        (5, "tax", None, "357.69"),
    ]
    assert draft.lines[0].description == "API calls"
    assert draft.lines[0].unit == "call"
    assert draft.lines[3].description == "Discount 5%"
    assert draft.lines[4].description == "Tax 20%"
    assert (draft.subtotal, draft.discount, draft.tax, draft.total) == (
        D("1882.57"),
        D("-94.13"),
        D("357.69"),
        D("2146.13"),
    )
    assert draft.status == "final"
    assert draft.issue_date == date(2026, 12, 1)
    assert draft.due_date == date(2027, 1, 15)  # 1 December + 45 days
    check_sums(draft)


def test_zero_discount_and_zero_tax_give_no_line() -> None:
    saas = plan("saas", API)
    acct = account(contract("c1", "saas", "2026-01-01", discount="0"), tax_rate="0")
    usage = [total(API, "100", "0.1", contract_id="c1", period="2026-02")]

    draft = assemble(acct, catalog(saas), "2026-02", usage)

    assert summary(draft) == [(1, "usage", "api", "0.10")]
    assert (draft.discount, draft.tax) == (D("0"), D("0"))
    assert not draft.discount.is_signed()


def test_discount_rounding_to_zero_gives_no_line() -> None:
    saas = plan("saas", API)
    acct = account(contract("c1", "saas", "2026-01-01", discount="1"), tax_rate="20")
    usage = [total(API, "40", "0.04", contract_id="c1", period="2026-02")]

    draft = assemble(acct, catalog(saas), "2026-02", usage)

    # S = 0.04; discount 0.04 × 1% = 0.0004 -> 0.00: no line.
    # tax 0.04 × 20% = 0.008 -> 0.01
    assert summary(draft) == [(1, "usage", "api", "0.04"), (2, "tax", None, "0.01")]


def test_jpy_has_no_minor_unit() -> None:
    jp = plan("jp", API, SMS, recurring=[RecurringFee("base", D("5000"), "Base")], currency="JPY")
    acct = account(contract("c1", "jp", "2026-06-11"), tax_rate="10", account_id="tokyo")
    usage = [
        total(API, "1234500", "1234.5", contract_id="c1", period="2026-06", account_id="tokyo"),
        total(SMS, "1990", "99.5", contract_id="c1", period="2026-06", account_id="tokyo"),
    ]

    draft = assemble(acct, catalog(jp), "2026-06", usage)

    # June has 30 days; in effect 11..30 = 20 days.
    # 1 usage     1234.5 -> 1234 (tie, 1234 even)
    # 2 usage     99.5   -> 100  (tie, 99 odd)
    # 3 recurring 5000 × 20 / 30 = 3333.33… -> 3333
    #   S = 4667; tax 466.7 -> 467; total 5134
    assert summary(draft) == [
        (1, "usage", "api", "1234"),
        (2, "usage", "sms", "100"),
        (3, "recurring", "base", "3333"),
        (4, "tax", None, "467"),
    ]
    assert str(draft.total) == "5134"
    assert str(draft.subtotal) == "4667"
    assert draft.currency == "JPY"
    check_sums(draft)


def test_bhd_has_three_decimals() -> None:
    bh = plan(
        "bh", STORAGE, recurring=[RecurringFee("base", D("30"), "Base")], currency="BHD", rounding="half_up"
    )
    acct = account(
        contract("c1", "bh", "2026-06-21"), tax_rate="10", account_id="manama", timezone="Asia/Bahrain"
    )
    usage = [total(STORAGE, "617.275", "12.3455", contract_id="c1", period="2026-06", account_id="manama")]

    draft = assemble(acct, catalog(bh), "2026-06", usage)

    # 1 usage     12.3455 -> 12.346 (half_up tie)
    # 2 recurring 30 × 10 / 30 -> 10.000 (in effect 21..30)
    #   S = 22.346; tax 2.2346 -> 2.235; total 24.581
    assert summary(draft) == [
        (1, "usage", "storage", "12.346"),
        (2, "recurring", "base", "10.000"),
        (3, "tax", None, "2.235"),
    ]
    assert str(draft.total) == "24.581"
    assert str(draft.discount) == "0.000"
    check_sums(draft)


@pytest.mark.parametrize(
    ("mode", "usage_amount", "discount", "total_amount"),
    [
        # usage 2.345: half_even -> 2.34, half_up -> 2.35.
        # discount: half_even 2.34 × 50% = 1.17; half_up 2.35 × 50% = 1.175 -> 1.18 (tie, up)
        ("half_even", "2.34", "-1.17", "1.17"),
        ("half_up", "2.35", "-1.18", "1.17"),
    ],
)
def test_half_even_versus_half_up_on_a_tie(
    mode: RoundingMode, usage_amount: str, discount: str, total_amount: str
) -> None:
    saas = plan("saas", API, rounding=mode)
    acct = account(contract("c1", "saas", "2026-01-01", discount="50"))
    usage = [total(API, "2345", "2.345", contract_id="c1", period="2026-02")]

    draft = assemble(acct, catalog(saas), "2026-02", usage)

    assert summary(draft) == [(1, "usage", "api", usage_amount), (2, "discount", None, discount)]
    assert str(draft.total) == total_amount


def test_account_in_auckland_bills_by_local_month() -> None:
    # NZDT is UTC+13 until 5 April 2026: local midnight of 1 Feb is 31 Jan 11:00 UTC.
    acct = account(contract("c1", "nz", "2026-01-01"), account_id="kiwi", timezone="Pacific/Auckland")
    instants = [
        datetime(2026, 1, 31, 10, 59, 59, tzinfo=UTC),  # 31 Jan 23:59:59 local -> 2026-01
        datetime(2026, 1, 31, 11, 0, 0, tzinfo=UTC),  # 1 Feb 00:00 local     -> 2026-02
        datetime(2026, 2, 28, 10, 59, 59, tzinfo=UTC),  # 28 Feb 23:59:59 local -> 2026-02
        datetime(2026, 2, 28, 11, 0, 0, tzinfo=UTC),  # 1 Mar 00:00 local     -> 2026-03
    ]
    periods = [acct.period_of(instant) for instant in instants]
    assert periods == ["2026-01", "2026-02", "2026-02", "2026-03"]

    nz = plan("nz", SMS, currency="NZD")
    # One SMS per instant; count meter, 0.05 each.
    february = [total(SMS, "2", "0.10", contract_id="c1", period="2026-02", events=2, account_id="kiwi")]

    draft = assemble(acct, catalog(nz), "2026-02", february)

    assert summary(draft) == [(1, "usage", "sms", "0.10")]
    assert draft.lines[0].description == "SMS"
    assert draft.lines[0].unit == "message"
    assert draft.event_count == 2
    assert (draft.period_start, draft.period_end) == (date(2026, 2, 1), date(2026, 2, 28))
    assert (draft.issue_date, draft.due_date) == (date(2026, 3, 1), date(2026, 3, 31))
    assert draft.invoice_id == invoice_id_for("kiwi", "2026-02")


def test_zero_aggregate_still_gives_a_usage_line() -> None:
    saas = plan("saas", API, SEATS)
    acct = account(contract("c1", "saas", "2026-01-01"))
    # Three events of quantity 0 on api; seats had one user.
    usage = [
        total(SEATS, "1", "8", contract_id="c1", period="2026-02"),
        total(API, "0", "0", contract_id="c1", period="2026-02", events=3),
    ]

    draft = assemble(acct, catalog(saas), "2026-02", usage)

    # 1 usage api   0 calls -> 0.00
    # 2 usage seats 1 user × 8 (volume) -> 8.00
    assert summary(draft) == [(1, "usage", "api", "0.00"), (2, "usage", "seats", "8.00")]
    assert draft.lines[0].quantity == D("0")
    assert draft.event_count == 4


def test_zero_event_placeholder_is_not_activity() -> None:
    saas = plan("saas", API)
    acct = account(contract("c1", "saas", "2026-01-01"))
    placeholder = total(API, "0", "0", contract_id="c1", period="2026-02", events=0)

    draft = assemble(acct, catalog(saas), "2026-02", [placeholder])

    assert draft.lines == ()  # contract in effect, nothing to bill: an empty draft
    assert draft.total == D("0")
    assert str(draft.total) == "0.00"


@pytest.mark.parametrize(
    "contracts",
    [
        (),  # no contract at all
        (contract("c1", "saas", "2026-05-01"),),  # starts after the period
        (contract("c1", "saas", "2026-01-01", "2026-04-01"),),  # ended before (end exclusive)
        (
            contract(
                "c1",
                "saas",
                "2026-01-01",
                "2026-03-01",
                one_time=[OneTimeCharge("x", D("1"), date(2026, 3, 31), "X")],
            ),
        ),  # one-time charge dated outside the period
    ],
)
def test_no_draft_without_usage_one_time_or_contract(contracts: tuple[Contract, ...]) -> None:
    saas = plan("saas", API, recurring=[PLATFORM])
    acct = account(*contracts)

    assert assemble_invoice(acct, catalog(saas), "2026-04", [], "open") is None


def test_draft_is_deterministic_and_input_order_free() -> None:
    saas = plan("saas", API, STORAGE, SEATS, recurring=[PLATFORM])
    acct = account(contract("c1", "saas", "2026-01-01", discount="3"), tax_rate="8.5")
    usage = [
        total(API, "1", "0.001", contract_id="c1", period="2026-02"),
        total(STORAGE, "2", "0.04", contract_id="c1", period="2026-02"),
        total(SEATS, "12", "72", contract_id="c1", period="2026-02"),
    ]
    cat = catalog(saas)

    assert assemble(acct, cat, "2026-02", usage) == assemble(acct, cat, "2026-02", usage[::-1])


# --- inputs that cannot give a correct invoice ----------------------------


def _simple() -> tuple[Account, Catalog]:
    return account(contract("c1", "saas", "2026-01-01")), catalog(plan("saas", API, STORAGE))


def test_rejects_usage_of_another_account_or_period() -> None:
    acct, cat = _simple()
    with pytest.raises(InvoiceAssemblyError, match="given for acme/2026-02"):
        assemble_invoice(
            acct, cat, "2026-02", [total(API, "1", "1", contract_id="c1", period="2026-03")], "open"
        )
    other = total(API, "1", "1", contract_id="c1", period="2026-02", account_id="other")
    with pytest.raises(InvoiceAssemblyError, match="other/2026-02"):
        assemble_invoice(acct, cat, "2026-02", [other], "open")


def test_rejects_two_totals_for_one_contract_and_charge() -> None:
    acct, cat = _simple()
    one = total(API, "1", "1", contract_id="c1", period="2026-02")
    with pytest.raises(InvoiceAssemblyError, match="two usage totals for charge 'api' under contract 'c1'"):
        assemble_invoice(acct, cat, "2026-02", [one, one], "open")


def test_rejects_usage_of_a_charge_outside_the_contracts_in_effect() -> None:
    acct, cat = _simple()
    stray = total(SMS, "1", "1", contract_id="c1", period="2026-02")
    with pytest.raises(InvoiceAssemblyError, match="matches no contract in effect"):
        assemble_invoice(acct, cat, "2026-02", [stray], "open")


def test_rejects_usage_rated_under_an_unknown_contract_or_meter() -> None:
    acct, cat = _simple()
    with pytest.raises(InvoiceAssemblyError, match="'c9', 'api'"):
        assemble_invoice(
            acct, cat, "2026-02", [total(API, "1", "1", contract_id="c9", period="2026-02")], "open"
        )
    wrong_meter = replace(total(API, "1", "1", contract_id="c1", period="2026-02"), meter="storage")
    with pytest.raises(InvoiceAssemblyError, match="meter"):
        assemble_invoice(acct, cat, "2026-02", [wrong_meter], "open")


def test_rejects_a_zero_event_total_that_carries_money() -> None:
    acct, cat = _simple()
    ghost = total(API, "5", "0.005", contract_id="c1", period="2026-02", events=0)
    with pytest.raises(InvoiceAssemblyError, match="no events"):
        assemble_invoice(acct, cat, "2026-02", [ghost], "open")


def test_rejects_contracts_mixing_currencies() -> None:
    acct = account(contract("c1", "eur", "2026-01-01", "2026-02-10"), contract("c2", "usd", "2026-02-10"))
    cat = catalog(plan("eur", API), plan("usd", STORAGE, currency="USD"))
    with pytest.raises(InvoiceAssemblyError, match="mix currencies"):
        assemble_invoice(acct, cat, "2026-02", [], "open")


def test_unknown_currency_is_an_error() -> None:
    acct = account(contract("c1", "odd", "2026-01-01"))
    with pytest.raises(UnknownCurrencyError):
        assemble_invoice(acct, catalog(plan("odd", API, currency="XYZ")), "2026-02", [], "open")


@pytest.mark.parametrize(
    ("period", "status"), [("2026-2", "open"), ("2026-13", "open"), ("2026-02", "draft")]
)
def test_rejects_bad_period_or_status(period: str, status: str) -> None:
    acct, cat = _simple()
    with pytest.raises(InvoiceAssemblyError):
        assemble_invoice(acct, cat, period, [], status)


def test_unknown_plan_is_an_error() -> None:
    acct = account(contract("c1", "gone", "2026-01-01"))
    with pytest.raises(InvoiceAssemblyError, match="unknown plan"):
        assemble_invoice(acct, catalog(), "2026-02", [], "open")


# --- properties ----------------------------------------------------------------

_money = st.decimals(min_value=0, max_value=10**9, places=18, allow_nan=False, allow_infinity=False)
_percent = st.one_of(st.none(), st.decimals(min_value=0, max_value=100, places=4))


@given(
    amounts=st.lists(_money, min_size=0, max_size=3),
    fee=_money,
    start_day=st.integers(min_value=1, max_value=28),
    minimum=st.one_of(st.none(), _money),
    discount=_percent,
    tax_rate=_percent,
    currency=st.sampled_from(["EUR", "JPY", "BHD"]),
    mode=st.sampled_from(["half_even", "half_up"]),
)
def test_draft_arithmetic_holds_for_any_amounts(
    amounts: list[Decimal],
    fee: Decimal,
    start_day: int,
    minimum: Decimal | None,
    discount: Decimal | None,
    tax_rate: Decimal | None,
    currency: str,
    mode: RoundingMode,
) -> None:
    charges = (API, STORAGE, SMS)[: len(amounts)]
    p = plan("p", *charges, recurring=[RecurringFee("fee", fee, "Fee")], currency=currency, rounding=mode)
    c = Contract(
        "c1",
        "acme",
        "p",
        date(2026, 2, start_day),
        None,
        discount_percent=discount,
        minimum_commitment=minimum,
    )
    acct = Account("acme", "ACME", "Europe/Paris", (c,), tax_rate=tax_rate)
    usage = [
        total(charge, str(amount), str(amount), contract_id="c1", period="2026-02")
        for charge, amount in zip(charges, amounts, strict=True)
    ]

    draft = assemble(acct, catalog(p), "2026-02", usage)

    check_sums(draft)
    exponent = -minor_units(currency)
    money = [line.amount for line in draft.lines] + [draft.subtotal, draft.discount, draft.tax, draft.total]
    assert all(amount.as_tuple().exponent == exponent for amount in money)
    assert all(line.amount >= 0 for line in draft.lines if line.kind != "discount")
    usage_sum = sum((line.amount for line in draft.lines if line.kind == "usage"), D(0))
    true_up = sum((line.amount for line in draft.lines if line.kind == "minimum_commitment"), D(0))
    if minimum is None or usage_sum >= minimum:
        assert true_up == 0
    else:
        # The true-up brings usage to the minimum, within half a minor unit.
        assert abs(usage_sum + true_up - minimum) <= D(1).scaleb(exponent) / 2
