"""JSON integer literals read exactly by the stdlib parser (see mediation.formats).

A module of its own because it is the one class of mediation that subclasses a
non-builtin type (Decimal): mypyc, which compiles the rest of mediation (setup.py),
cannot compile such a class, so it stays interpreted here.
"""

from __future__ import annotations

from decimal import Decimal


class IntLiteral(Decimal):
    """A JSON integer literal read exactly (as opposed to a number with a fraction or exponent)."""

    __slots__ = ()
