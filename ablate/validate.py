"""Small helpers for validating YAML-shaped input with one-line, located error messages.

Every message reads ``<file>: <field path>: <what is wrong> (<what is allowed>)`` so a user can
go straight to the offending line.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from typing import Any, Iterable

import yaml

from ablate.errors import AblateError


def load_yaml_file(path: str, what: str) -> Any:
    """Parse a YAML file, turning every way it can fail into one located line."""
    if not os.path.isfile(path):
        raise AblateError(f"{path}: no such {what}")
    try:
        with open(path, encoding="utf-8") as f:
            return yaml.safe_load(f)
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise AblateError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None


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


def check_choice(value: Any, choices: Iterable, where: str) -> Any:
    choices = list(choices)
    if value not in choices:
        raise AblateError(f"{where}: {value!r} is not allowed (allowed: {', '.join(map(str, choices))})")
    return value


def check_positive(value: Any, where: str, allow_zero: bool = False) -> Any:
    if value < 0 or (value == 0 and not allow_zero):
        raise AblateError(f"{where}: {value!r} must be {'>= 0' if allow_zero else '> 0'}")
    return value


_SCALARS = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def build_dataclass(cls: type, raw: Any, where: str, nested: dict[str, Any] | None = None):
    """Construct dataclass ``cls`` from a YAML mapping, checking keys and scalar types.

    Fields whose annotation is a dataclass are built recursively; ``nested`` maps a field name
    to a custom builder ``f(raw, where)`` for fields that need more than that. After
    construction ``obj.validate(where)`` runs, if the class has it.
    """
    raw = {} if raw is None else raw
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.name.startswith("_")}
    check_keys(raw, fields, where)
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in raw.items():
        at = f"{where}.{name}"
        if nested and name in nested:
            kwargs[name] = nested[name](value, at)
            continue
        kwargs[name] = _coerce(hints[name], value, at)
    obj = cls(**kwargs)
    if hasattr(obj, "validate"):
        obj.validate(where)
    return obj


def _coerce(hint: Any, value: Any, where: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _coerce(inner[0], value, where)
        for a in inner:
            try:
                return _coerce(a, value, where)
            except AblateError:
                continue
        raise AblateError(f"{where}: {value!r} has the wrong type")
    if dataclasses.is_dataclass(hint):
        return build_dataclass(hint, value, where)
    if hint is float:
        return float(check_type(value, (int, float), where, "a number"))
    if hint in _SCALARS:
        return check_type(value, hint, where, _SCALARS[hint])
    if origin is list:
        check_type(value, list, where, "a list")
        return [_coerce(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)] if args else value
    if origin is dict:
        check_type(value, dict, where, "a mapping")
        return {k: _coerce(args[1], v, f"{where}.{k}") for k, v in value.items()} if args else value
    return value
