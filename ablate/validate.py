"""The validation layer: YAML files, numbers and schema dataclasses, with one-line located errors.

Every message reads ``<file>: <field.path>: <what is wrong> (allowed: <what is allowed>)`` and
embeds user values only through ``ablate.errors.show`` (bounded), so a user can go straight to
the offending line and a hostile file cannot make the line long.

- ``load_yaml_file`` (``ablate.yamlfile``, re-exported here): every YAML reader (recipes,
  corpora specs, sweep files) goes through it: duplicate keys, alias bombs, syntax errors with
  line and column, empty, binary, missing and directory files are one line each.
- ``check_*``: one value at a time: keys, names, types, finite numbers within bounds, choices.
- ``build_dataclass``: a schema dataclass validates itself from its annotations and field
  metadata: scalar types (``bool`` is never a number), ``Literal[...]`` choices, every float
  finite, every int within int64, per-field ranges and converters given with ``checked(...)``,
  then the class's ``validate(where)`` hook for checks that relate several fields.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, Callable, Iterable

from ablate.errors import AblateError, show
from ablate.yamlfile import kind_of, load_yaml_file  # noqa: F401  (load_yaml_file: re-exported)

INT64_MAX = 2**63 - 1
COUNT_MAX = 2**62  # sizes and counts: far beyond any real run, safely inside int64 arithmetic


# ----------------------------------------------------------------------------------- checks


def field_where(where: str, name: str | int) -> str:
    """The location of field ``name`` below ``where``: ``file: a.b`` (a top-level ``where`` is
    the file name alone, or ends with ':')."""
    if isinstance(name, int):
        return f"{where}[{name}]"
    if where.endswith(":"):
        return f"{where} {name}"
    if ": " not in where:
        return f"{where}: {name}"
    return f"{where}.{name}"


def check_keys(
    mapping: Any, allowed: Iterable[str], where: str, required: Iterable[str] = ()
) -> dict:
    """Require ``mapping`` to be a dict with only ``allowed`` keys and all ``required`` ones."""
    allowed = list(allowed)
    if not isinstance(mapping, dict):
        raise AblateError(
            f"{where}: expected a mapping (allowed keys: {', '.join(allowed)}), "
            f"got {kind_of(mapping)} {show(mapping, 40)}"
        )
    for key in mapping:
        if key not in allowed:
            raise AblateError(f"{where}: unknown key {show(key)} (allowed: {', '.join(allowed)})")
    for key in required:
        if key not in mapping:
            raise AblateError(f"{where}: missing required key {key!r}")
    return mapping


def check_names(mapping: Any, where: str, what: str) -> dict:
    """A mapping whose keys are names (domains, sources, field paths): every key a string."""
    check_type(mapping, dict, where, what)
    for key in mapping:
        if not isinstance(key, str) or not key:
            raise AblateError(
                f"{where}: key {show(key)} is not a name (allowed: {what} with string keys)"
            )
    return mapping


def check_type(value: Any, types_: type | tuple, where: str, what: str) -> Any:
    # bool is an int in Python; a YAML 'yes' must not pass as a number.
    if isinstance(value, bool) and bool not in (types_ if isinstance(types_, tuple) else (types_,)):
        raise AblateError(f"{where}: expected {what}, got {show(value)}")
    if not isinstance(value, types_):
        raise AblateError(f"{where}: expected {what}, got {show(value)}")
    return value


def check_number(
    value: Any,
    where: str,
    *,
    integer: bool = False,
    gt=None,
    ge=None,
    lt=None,
    le=None,
    what: str | None = None,
) -> Any:
    """A finite number (an int if ``integer``) within the bounds given; bool is no number.
    Ints stay within int64 whatever the bounds."""
    if integer:
        ge = -INT64_MAX - 1 if ge is None and gt is None else ge
        le = INT64_MAX if le is None and lt is None else le
    allowed = what or _describe(integer, gt, ge, lt, le)
    if isinstance(value, bool) or not isinstance(value, (int, float) if not integer else int):
        raise AblateError(
            f"{where}: expected {what or ('an integer' if integer else 'a finite number')}, "
            f"got {show(value)}"
        )
    if isinstance(value, float) and not math.isfinite(value):
        raise AblateError(f"{where}: {show(value)} is not a finite number (allowed: {allowed})")
    ok = (
        (gt is None or value > gt)
        and (ge is None or value >= ge)
        and (lt is None or value < lt)
        and (le is None or value <= le)
    )
    if not ok:
        raise AblateError(f"{where}: {show(value)} is out of range (allowed: {allowed})")
    return value


def _bound(x) -> str:
    for name, v in (("2**63 - 1", INT64_MAX), ("-2**63", -INT64_MAX - 1), ("2**62", COUNT_MAX)):
        if x == v:
            return name
    return f"{x:g}" if isinstance(x, float) else str(x)


def _describe(integer: bool, gt, ge, lt, le) -> str:
    parts = [
        f"> {_bound(gt)}" if gt is not None else None,
        f">= {_bound(ge)}" if ge is not None else None,
        f"< {_bound(lt)}" if lt is not None else None,
        f"<= {_bound(le)}" if le is not None else None,
    ]
    noun = "an integer" if integer else "a finite number"
    bounds = [p for p in parts if p]
    return f"{noun} {' and '.join(bounds)}" if bounds else noun


def check_fraction(value: Any, where: str, low_open: bool = False) -> float:
    """A finite number in [0, 1) (or (0, 1] with ``low_open``)."""
    if low_open:
        return float(check_number(value, where, gt=0, le=1))
    return float(check_number(value, where, ge=0, lt=1))


def check_choice(value: Any, choices: Iterable, where: str) -> Any:
    choices = list(choices)
    # bool == 1 and 1.0 == 1: only a value of a choice's own type is that choice
    if not any(value == c and type(value) is type(c) for c in choices):
        raise AblateError(
            f"{where}: {show(value)} is not allowed (allowed: {', '.join(map(str, choices))})"
        )
    return value


def check_positive(value: Any, where: str, allow_zero: bool = False) -> Any:
    """Kept for callers outside the schema: a finite number > 0 (>= 0 with ``allow_zero``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise AblateError(f"{where}: expected a number, got {show(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise AblateError(f"{where}: {show(value)} is not a finite number")
    if value < 0 or (value == 0 and not allow_zero):
        raise AblateError(f"{where}: {show(value)} must be {'>= 0' if allow_zero else '> 0'}")
    return value


# ----------------------------------------------------------------------------------- schema


def checked(
    default: Any = dataclasses.MISSING,
    *,
    default_factory: Any = dataclasses.MISSING,
    convert: Callable[[Any, str], Any] | None = None,
    gt=None,
    ge=None,
    lt=None,
    le=None,
    internal: bool = False,
) -> Any:
    """A dataclass field that ``build_dataclass`` validates: ``convert(value, where)`` replaces
    the type check (token counts like ``4K``); ``gt/ge/lt/le`` bound a number (after any
    conversion; None passes). ``internal``: not read from YAML nor written by ``to_dict``."""
    meta = {
        k: v for k, v in dict(convert=convert, gt=gt, ge=ge, lt=lt, le=le).items() if v is not None
    }
    if internal:
        meta["internal"] = True
    return dataclasses.field(default=default, default_factory=default_factory, metadata=meta)


def yaml_fields(cls: type) -> list[dataclasses.Field]:
    """The fields a YAML mapping may give (not those starting with '_' nor internal ones)."""
    return [
        f
        for f in dataclasses.fields(cls)
        if not f.name.startswith("_") and not f.metadata.get("internal")
    ]


_SCALARS = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
_RANGE = ("gt", "ge", "lt", "le")


def build_dataclass(
    cls: type,
    raw: Any,
    where: str,
    nested: dict[str, Any] | None = None,
    fixed: dict[str, Any] | None = None,
):
    """Construct dataclass ``cls`` from a YAML mapping, checking keys, types and ranges.

    Fields whose annotation is a dataclass are built recursively; ``nested`` maps a field name
    to a custom builder ``f(raw, where)``; ``fixed`` gives values that do not come from the
    YAML (internal fields). A field without a default must be given. After construction
    ``obj.validate(where)`` runs, if the class has it.
    """
    raw = {} if raw is None else raw
    fields = {f.name: f for f in yaml_fields(cls)}
    required = [
        n
        for n, f in fields.items()
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    check_keys(raw, fields, where, required=required)
    hints = typing.get_type_hints(cls)
    kwargs = dict(fixed or {})
    for name, value in raw.items():
        at = field_where(where, name)
        meta = fields[name].metadata
        if nested and name in nested:
            kwargs[name] = nested[name](value, at)
            continue
        bounds = {k: meta[k] for k in _RANGE if k in meta}
        if "convert" in meta and value is not None:
            value = meta["convert"](value, at)
            if bounds:
                value = check_number(value, at, integer=isinstance(value, int), **bounds)
        else:
            value = _coerce(hints[name], value, at, bounds)
        kwargs[name] = value
    obj = cls(**kwargs)
    if hasattr(obj, "validate"):
        obj.validate(where)
    return obj


def _coerce(hint: Any, value: Any, where: str, bounds: dict | None = None) -> Any:
    """``value`` checked against the annotation ``hint`` (numbers also against ``bounds``)."""
    bounds = bounds or {}
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _coerce(inner[0], value, where, bounds)
        for a in inner:
            try:
                return _coerce(a, value, where)
            except AblateError:
                continue
        raise AblateError(f"{where}: {show(value)} has the wrong type")
    if origin is typing.Literal:
        return check_choice(value, args, where)
    if dataclasses.is_dataclass(hint):
        return build_dataclass(hint, value, where)
    if hint is float:
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 1e300:
            raise AblateError(f"{where}: {show(value)} is too large (allowed: a finite number)")
        return float(check_number(value, where, **bounds))
    if hint is int:
        return check_number(value, where, integer=True, **bounds)
    if hint in _SCALARS:
        return check_type(value, hint, where, _SCALARS[hint])
    if origin is list:
        check_type(value, list, where, "a list")
        return (
            [_coerce(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)] if args else value
        )
    if origin is tuple:
        check_type(value, (list, tuple), where, "a list")
        item = args[0] if args else Any
        return tuple(_coerce(item, v, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if args and args[0] is str:
            check_names(value, where, "a mapping")
        else:
            check_type(value, dict, where, "a mapping")
        return {k: _coerce(args[1], v, f"{where}.{k}") for k, v in value.items()} if args else value
    return value
