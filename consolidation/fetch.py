"""Gathering a batch of rated records for one store transaction."""

from __future__ import annotations

import time
from typing import Final

from confluent_kafka import Consumer, Message

# While records keep arriving, a batch gathers them this much longer (up to its limit): a
# store transaction has a fixed cost (~0.15 s), and upstream commits arrive as bursts, so a
# batch of what one wait brings would pay that cost for each burst.
LINGER_S: Final = 0.5


def gather(consumer: Consumer, limit: int, wait_s: float) -> list[Message]:
    """What arrives within `wait_s`, then more while more keeps coming, for up to LINGER_S;
    at most `limit` records. At low load: one wait, and one more that brings nothing."""
    messages: list[Message] = consumer.consume(limit, wait_s)
    deadline = time.monotonic() + LINGER_S
    while messages and len(messages) < limit and time.monotonic() < deadline:
        more = consumer.consume(limit - len(messages), wait_s)
        if not more:
            break  # a quiet moment: store what there is
        messages.extend(more)
    return messages
