"""Final answers of GSM8K-style math problems: extract, normalise, compare.

A completion's answer comes from an explicit marker when it has one, in this order: the number
after the first ``####`` (the GSM8K solution format), the number right after the last
``The answer is`` (chain-of-thought prompts), the single number of the last line starting ``A:``
(``A: 42``);
else it is the last number in the text. The completion is first cut at the next few-shot
question (``truncate_at_stop``) and GSM8K calculator annotations (``<<48/2=24>>``) are removed.

Numbers are normalised to one canonical string: thousands separators, currency signs and units
around the number are dropped (``"$1,000.50"`` -> ``"1000.5"``, ``"18 dollars"`` / ``"18%"`` ->
``"18"``), a leading ``+`` goes, a minus stays (``"-3"``; a ``-`` glued to a preceding digit, as
in ``5-3``, is an operator, not a sign), decimals are exact and lose trailing zeros (``"18.00"``
-> ``"18"``, ``"0.50"`` -> ``"0.5"``). A fraction written ``a/b`` (digits on both sides of the
slash, nothing in between) is **evaluated**: ``"48/2"`` -> ``"24"``, ``"3/4"`` -> ``"0.75"``, and a
non-terminating one stays a reduced fraction (``"2/6"`` -> ``"1/3"``), so every canonical string
names an exact rational and equal values have equal strings. Scientific notation and number
words (``"eighteen"``) are not read.

``answers_match`` compares values, exactly or within a relative tolerance (for program-of-thought
floats such as ``17.999999999``); ``pot_value_to_answer`` turns what a ``solution()`` returned
into the same canonical string.
"""

from __future__ import annotations

import math
import numbers
import re
from fractions import Fraction

from ablate.errors import AblateError

# where a few-shot continuation starts: the model begins the next example
GSM8K_STOPS = ("Question:", "\nQ:", "<|endoftext|>", "</s>", "<|im_end|>")

_MINUS = "-\u2212\u2013"  # ASCII hyphen-minus, Unicode minus sign, en dash
_CURRENCY = "$\u20ac\u00a3\u00a5\u20b9"  # $ EUR GBP YEN INR
_NUMBER = re.compile(
    rf"""
    (?<![\w./])                      # not the tail of a word, a decimal or a fraction ('1.2.3')
    (?:(?<![\w)\]])(?P<sign>[{_MINUS}+]))?   # a sign, unless it follows an operand ('5-3')
    [{_CURRENCY}]?                    # currency between sign and digits ('-$5')
    (?P<num>
        (?:\d{{1,3}}(?:,\d{{3}})+|\d+)(?:\.\d+)?   # 1,234,567.89 or 1234.5
        (?:/\d+(?![\d.,/]\d))?                    # a fraction 3/4 (not a date 3/4/2020)
      | \.\d+                                       # .5
    )
    (?!\d)
    """,
    re.VERBOSE,
)
_ANNOTATION = re.compile(r"<<[^<>]*>>")
_HASHES = re.compile(r"####")
_ANSWER_IS = re.compile(r"\banswer is\b[:\s]*", re.IGNORECASE)
_A_LINE = re.compile(r"^[ \t]*A:(?P<rest>[^\n]*)$", re.MULTILINE)
_FRACTION_REPR = re.compile(r"Fraction\(\s*(-?\d+)\s*,\s*(\d+)\s*\)")


def truncate_at_stop(text: str, stops=GSM8K_STOPS) -> str:
    """``text`` up to the earliest occurrence of any of ``stops`` (all of it if none occurs)."""
    cut = len(text)
    for stop in stops:
        if stop:
            i = text.find(stop)
            if i != -1 and i < cut:
                cut = i
    return text[:cut]


def _parse(match: re.Match) -> Fraction | None:
    num = match.group("num").replace(",", "")
    try:
        if "/" in num:
            top, bottom = num.split("/")
            if int(bottom) == 0:
                return None
            value = Fraction(Fraction(top), int(bottom))
        else:
            value = Fraction(num)
    except (ValueError, ZeroDivisionError):
        return None
    sign = match.group("sign")
    return -value if sign and sign in _MINUS else value


def _canonical(value: Fraction) -> str:
    if value.denominator == 1:
        return str(value.numerator)
    d = value.denominator
    for p in (2, 5):
        while d % p == 0:
            d //= p
    if d != 1:  # no terminating decimal: a reduced fraction
        return f"{value.numerator}/{value.denominator}"
    digits = 0
    scaled = value
    while scaled.denominator != 1:
        scaled *= 10
        digits += 1
    sign = "-" if scaled < 0 else ""
    text = str(abs(scaled.numerator)).rjust(digits + 1, "0")
    return f"{sign}{text[:-digits]}.{text[-digits:]}"


def _numbers(text: str) -> list[Fraction]:
    return [v for v in (_parse(m) for m in _NUMBER.finditer(text)) if v is not None]


def normalize_number(text: str | None) -> str | None:
    """The canonical string of the first number in ``text`` (``"$1,000.00"`` -> ``"1000"``), or
    None."""
    if text is None:
        return None
    values = _numbers(str(text))
    return _canonical(values[0]) if values else None


def _value(text: str | None) -> Fraction | None:
    if text is None:
        return None
    values = _numbers(str(text))
    return values[0] if values else None


def extract_gsm8k_answer(text: str | None, stops=GSM8K_STOPS) -> str | None:
    """The canonical final answer of a GSM8K-style completion, or None when it has no number.

    The number right after the first ``####`` that has one, else the number right after the
    last ``The answer is`` followed by one, else the only number of the last ``A: ...`` line that
    has exactly one, else the last number of the text; the text is first cut at the next few-shot
    question (``stops``; pass ``()`` to keep all).
    """
    if not text:
        return None
    text = _ANNOTATION.sub(" ", truncate_at_stop(text, stops))
    for m in _HASHES.finditer(text):
        tail = text[m.end() :].split("\n", 1)[0]
        value = _value(tail)
        if value is not None:
            return _canonical(value)
    for m in reversed(list(_ANSWER_IS.finditer(text))):
        first = _NUMBER.match(text[m.end() :])  # the number must come right after the marker
        value = _parse(first) if first else None
        if value is not None:
            return _canonical(value)
    for m in reversed(list(_A_LINE.finditer(text))):
        found = _numbers(m.group("rest"))
        if len(found) == 1:
            return _canonical(found[0])
    values = _numbers(text)
    return _canonical(values[-1]) if values else None


def answers_match(pred: str | None, gold: str | None, rel_tol: float = 1e-6) -> bool:
    """Whether two answers name the same number (exactly or within ``rel_tol``).

    Both are read with ``normalize_number`` rules (``"18"`` == ``"18.0"`` == ``"$18"``); when either
    has no number they match only as equal, non-empty stripped strings.
    """
    if pred is None or gold is None:
        return False
    a, b = _value(pred), _value(gold)
    if a is None or b is None:
        return bool(str(pred).strip()) and str(pred).strip() == str(gold).strip()
    if a == b:
        return True
    return math.isclose(float(a), float(b), rel_tol=rel_tol, abs_tol=0.0)


def reference_answer(row: dict) -> str:
    """The canonical label of a GSM8K row: the number after ``####`` in its ``answer`` field."""
    answer = row.get("answer") if isinstance(row, dict) else None
    if not isinstance(answer, str) or "####" not in answer:
        raise AblateError(
            "GSM8K row: the 'answer' field must be a solution ending in '#### <number>'"
        )
    label = normalize_number(answer.rsplit("####", 1)[1])
    if label is None:
        raise AblateError(
            f"GSM8K row: no number after '####' in {answer.rsplit('####', 1)[1].strip()[:40]!r}"
        )
    return label


def pot_value_to_answer(value, tol: float = 1e-6) -> str | None:
    """The canonical answer for what a program-of-thought ``solution()`` returned, or None.

    Integers as they are; floats within ``tol`` (relative, at least absolute ``tol``) of an integer
    become that integer (``17.9999999`` -> ``"18"``), other floats are rounded to 6 decimals;
    strings are read like completions (``"18 dollars"`` -> ``"18"``); a one-element list or tuple is
    its element. Booleans, NaN, infinities, complex numbers, other containers: None.
    """
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, Fraction):
        return _canonical(value)
    if isinstance(value, numbers.Real):
        try:
            v = float(value)
        except (OverflowError, ValueError):
            return None
        if not math.isfinite(v):
            return None
        nearest = round(v)
        if abs(v - nearest) <= tol * max(1.0, abs(v)):
            return str(int(nearest))
        return _canonical(Fraction(f"{v:.6f}"))
    if isinstance(value, str):
        m = _FRACTION_REPR.search(value)
        if m and int(m.group(2)) != 0:
            return _canonical(Fraction(int(m.group(1)), int(m.group(2))))
        return extract_gsm8k_answer(value, stops=())
    if isinstance(value, (list, tuple)) and len(value) == 1:
        return pot_value_to_answer(value[0], tol)
    return None
