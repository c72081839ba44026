"""Event templates: one per charge of each contract in effect in the month, pools sized
for the hot loop's bit masks."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime

from generator.templates import event_templates
from meterline.kernel.catalog import Catalog, period_bounds
from tests.generator.conftest import MONTH


def test_one_template_per_charge_of_each_contract_in_the_month(catalog: Catalog) -> None:
    first, following = period_bounds(MONTH)
    expected = sum(
        len(catalog.plans[contract.plan_id].charges)
        for account in catalog.accounts.values()
        for contract in account.contracts
        if max(contract.start, first) < (min(contract.end, following) if contract.end else following)
    )
    templates, weights = event_templates(catalog, MONTH, random.Random(1))
    assert len(templates) == len(weights) == expected
    assert all(weight > 0 for weight in weights)


def test_pools_fit_the_bit_masks(catalog: Catalog) -> None:
    for template in event_templates(catalog, MONTH, random.Random(2))[0]:
        assert len(template.quantities) == 256  # indexed by 8 random bits
        size = len(template.attributes)
        assert size & (size - 1) == 0 and size <= 256, size  # a power of two: picked with a mask
        assert template.span > 0


def test_templates_fall_in_the_contract_and_render_valid_json(catalog: Catalog) -> None:
    for template in event_templates(catalog, MONTH, random.Random(3))[0]:
        account_id = json.loads("{" + template.head + "}")["account_id"]
        account = catalog.accounts[account_id]
        for instant in (template.start, template.start + template.span - 1):
            assert account.contract_at(datetime.fromtimestamp(instant, UTC)) is not None
        for fragment in (template.quantities[0], template.attributes[-1]):
            json.loads("{" + template.head + fragment + "}")
