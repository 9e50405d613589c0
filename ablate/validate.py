"""Small helpers for validating YAML-shaped input with one-line, located error messages.

Every message reads ``<file>: <field path>: <what is wrong> (<what is allowed>)`` so a user can
go straight to the offending line.
"""

from __future__ import annotations

from typing import Any, Iterable

from ablate.errors import AblateError


def check_keys(mapping: Any, allowed: Iterable[str], where: str, required: Iterable[str] = ()) -> dict:
    """Require ``mapping`` to be a dict with only ``allowed`` keys and all ``required`` ones."""
    allowed = list(allowed)
    if not isinstance(mapping, dict):
        raise AblateError(f"{where}: expected a mapping with keys {', '.join(allowed)}, got {type(mapping).__name__}")
    for key in mapping:
        if key not in allowed:
            raise AblateError(f"{where}: unknown key {key!r} (allowed: {', '.join(allowed)})")
    for key in required:
        if key not in mapping:
            raise AblateError(f"{where}: missing required key {key!r}")
    return mapping


def check_type(value: Any, types: type | tuple, where: str, what: str) -> Any:
    # bool is an int in Python; a YAML 'yes' must not pass as a number.
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise AblateError(f"{where}: expected {what}, got {value!r}")
    if not isinstance(value, types):
        raise AblateError(f"{where}: expected {what}, got {value!r}")
    return value


def check_fraction(value: Any, where: str, low_open: bool = False) -> float:
    check_type(value, (int, float), where, "a number between 0 and 1")
    if not (0 < value <= 1 if low_open else 0 <= value < 1):
        raise AblateError(f"{where}: {value!r} is out of range (allowed: {'0 < x <= 1' if low_open else '0 <= x < 1'})")
    return float(value)
