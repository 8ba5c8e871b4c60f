"""How every report writes a number and an interval: the terminal, Markdown, CSV-free text of the site and
findings all call these two, so "value [lo, hi]" and "n/a" read the same everywhere.

An interval whose bounds are not finite is never shown as if it had a CI: it says why (its note names
"unbounded" for a recovery whose denominator is not significantly above 0; anything else is "no CI").
"""

from __future__ import annotations

import math

from harness.result import Interval


def number(x: object, digits: int = 3, *, sign: bool = False) -> str:
    """`x` to `digits` decimals; "n/a" for None, NaN or anything that is not a number."""
    try:
        v = float(x)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "n/a"
    if math.isnan(v):
        return "n/a"
    return f"{v:+.{digits}f}" if sign else f"{v:.{digits}f}"


def has_ci(e: Interval) -> bool:
    return math.isfinite(e.lo) and math.isfinite(e.hi)


def interval(e: Interval | None, digits: int = 3, *, sign: bool = False, unit: str = "") -> str:
    """`value [lo, hi]`; `value (unbounded)` / `value (no CI)` without finite bounds; `n/a` without a value."""
    if e is None:
        return "n/a"
    if math.isnan(e.value):
        return "n/a" + (" (undefined)" if e.note else "")
    v = number(e.value, digits, sign=sign) + (f" {unit}" if unit else "")
    if not has_ci(e):
        return f"{v} ({'unbounded' if 'unbounded' in e.note else 'no CI'})"
    return f"{v} [{number(e.lo, digits, sign=sign)}, {number(e.hi, digits, sign=sign)}]"
