"""Token budgets as people write them: ``400B``, ``150M``, ``2.5T``, ``1.5e9``, ``12000``.

A budget is a whole, positive, finite number of tokens below 2**62: ``1e400``, ``.inf`` and
``.nan`` are refused in one line (never an OverflowError), and so is a bare fraction like
``1.5`` (half a token; a share of the stage is written ``share: 0.5``). With a unit the figure
is rounded to the nearest token.
"""

from __future__ import annotations

import math
import re

from ablate.errors import AblateError, show
from ablate.validate import COUNT_MAX

_UNITS = {"": 1, "K": 10**3, "M": 10**6, "B": 10**9, "G": 10**9, "T": 10**12}
_BUDGET_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([KMBGT]?)\s*$")
ALLOWED = "a token count like 400B, 150M, 2.5T, 1.5e9 or 12000"


def parse_tokens(value: object, where: str) -> int:
    """A positive token count; decimal units (B = 10^9), rounded to the nearest token."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise AblateError(f"{where}: expected {ALLOWED}, got {show(value)}")
    unit = ""
    if isinstance(value, str):
        m = _BUDGET_RE.match(value.upper())
        if not m:
            raise AblateError(f"{where}: expected {ALLOWED}, got {show(value)}")
        number, unit = m.group(1), m.group(2)
        # an exact integer stays exact; anything else goes through float (inf for 1e400)
        exact = number.isdigit() and len(number) < 30
        tokens = int(number) * _UNITS[unit] if exact else float(number) * _UNITS[unit]
    else:
        tokens = value
    if isinstance(tokens, float) and math.isnan(tokens):
        raise AblateError(f"{where}: {show(value)} is not a number (allowed: {ALLOWED})")
    if tokens >= COUNT_MAX:
        raise AblateError(f"{where}: {show(value)} is too large (allowed: {ALLOWED}, below 2**62)")
    if not tokens > 0:
        raise AblateError(
            f"{where}: {show(value)} must be a positive token count (allowed: {ALLOWED})"
        )
    if not unit and not float(tokens).is_integer():
        raise AblateError(
            f"{where}: {show(value)} is not a whole number of tokens (allowed: {ALLOWED}; "
            "a share of the stage is written share: 0.5)"
        )
    return int(round(tokens))


def format_tokens(n: float) -> str:
    """Short human form: 1.5B, 150M, 12.3K."""
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.4g}{unit}"
    return f"{n:.0f}"
