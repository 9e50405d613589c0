"""Token budgets as people write them: ``400B``, ``150M``, ``2.5T``, ``1.5e9``, ``12000``."""

from __future__ import annotations

import re

from ablate.errors import AblateError

_UNITS = {"": 1, "K": 10**3, "M": 10**6, "B": 10**9, "G": 10**9, "T": 10**12}
_BUDGET_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([KMBGT]?)\s*$")


def parse_tokens(value: object, where: str) -> int:
    """A positive token count; decimal units (B = 10^9), rounded to the nearest token."""
    if isinstance(value, bool):
        raise AblateError(f"{where}: expected a token count like 400B, 150M, 2.5T or 1.5e9, got {value!r}")
    if isinstance(value, (int, float)):
        tokens = value
    elif isinstance(value, str) and (m := _BUDGET_RE.match(value.upper())):
        tokens = float(m.group(1)) * _UNITS[m.group(2)]
    else:
        raise AblateError(f"{where}: expected a token count like 400B, 150M, 2.5T or 1.5e9, got {value!r}")
    if not tokens > 0:
        raise AblateError(f"{where}: {value!r} must be a positive token count")
    return int(round(tokens))


def format_tokens(n: float) -> str:
    """Short human form: 1.5B, 150M, 12.3K."""
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.4g}{unit}"
    return f"{n:.0f}"
