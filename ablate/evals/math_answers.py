"""Final answers of MATH-style problems: extract from LaTeX, normalise, judge equivalence.

* ``last_boxed(text)``: the content of the last ``\\boxed{...}`` (or ``\\fbox{...}``, or
  ``\\boxed 5``), nested braces matched; None when there is none.
* ``extract_math_answer(completion)``: the last boxed answer, else the Minerva prompt's
  ``The final answer is $X$``, else None. A completion is first cut at the next few-shot problem.
* ``normalize_math_answer(answer)``: the string form used for a first, exact comparison:
  ``\\dfrac``/``\\tfrac`` -> ``\\frac``, ``\\frac12`` -> ``\\frac{1}{2}``, ``\\left``/``\\right``,
  spacing commands and ``\\displaystyle`` dropped, ``\\text{...}`` units and ``^\\circ``/``\\%``/
  ``\\$`` removed, thousands separators (``1,000``) joined, a ``x =`` prefix dropped, a trailing
  period dropped, whitespace removed.
* ``math_equal(pred, gold)``: equal normal forms, else ``math-verify`` (Hugging Face's LaTeX
  answer verifier over sympy): symbolic and numeric equality where both parse (``0.5`` and
  ``\\frac12``, ``2\\sqrt2`` and ``\\sqrt8``, ``(x+1)^2`` and ``x^2+2x+1``), intervals with their
  open/closed ends, tuples in order, sets in any order.

``math-verify`` was chosen over sympy's own ``parse_latex``: it is maintained for exactly this
(it scores MATH in lighteval and open-r1), handles the answer forms MATH uses (intervals, sets,
``\\text`` units, percentages, degrees) and bounds every parse and comparison with a timeout,
while ``parse_latex`` needs a pinned ANTLR runtime and fails on many of these forms.
"""

from __future__ import annotations

import re

MATH_STOPS = ("\nProblem:",)  # where a few-shot completion starts the next problem

_BOX = re.compile(r"\\(?:boxed|fbox)\s*")
_FINAL = re.compile(r"[Tt]he final answer is\s*(.+?)(?:\.\s*I hope it is correct|\n|$)")


def last_boxed(text: str | None) -> str | None:
    if not text:
        return None
    found = None
    for m in _BOX.finditer(text):
        i = m.end()
        if i < len(text) and text[i] == "{":
            depth, j = 0, i
            while j < len(text):
                if text[j] == "{":
                    depth += 1
                elif text[j] == "}":
                    depth -= 1
                    if depth == 0:
                        break
                j += 1
            if depth == 0:
                found = text[i + 1 : j]
        elif i < len(text):  # ``\boxed 5``: one token
            tail = re.match(r"[^\s$]+", text[i:])
            if tail:
                found = tail.group(0)
    return found


def extract_math_answer(text: str | None) -> str | None:
    if not text:
        return None
    cut = len(text)
    for stop in MATH_STOPS:
        k = text.find(stop)
        if k != -1:
            cut = min(cut, k)
    text = text[:cut]
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed.strip()
    finals = _FINAL.findall(text)
    if finals:
        answer = finals[-1].strip().rstrip(".").strip()
        if len(answer) >= 2 and answer[0] == "$" and answer[-1] == "$":
            answer = answer.strip("$")
        return answer.strip() or None
    return None


_TEXT_UNIT = re.compile(r"\\(?:text|textbf|mbox|mathrm)\{\s*([^{}]*)\}")
_UNITS = (
    "degrees",
    "degree",
    "cm",
    "centimeters",
    "meters",
    "m",
    "km",
    "inches",
    "inch",
    "feet",
    "foot",
    "ft",
    "units",
    "unit",
    "square units",
    "sq units",
    "cents",
    "dollars",
    "dollar",
    "mph",
    "hours",
    "hour",
    "minutes",
    "minute",
    "seconds",
    "second",
    "days",
    "day",
    "pounds",
    "cups",
    "miles",
    "mile",
    "grams",
    "students",
    "people",
    "ways",
    "points",
    "tiles",
    "coins",
    "batches",
    "marbles",
)
_THOUSANDS = re.compile(r"(?<![\d.])(\d{1,3}(?:,\d{3})+)(?![\d,])")
_FRAC_SHORT = re.compile(r"\\frac(\d)(\d)")
_FRAC_SHORT2 = re.compile(r"\\frac\{([^{}]*)\}(\d)")
_SQRT_SHORT = re.compile(r"\\sqrt(\d+)")


def normalize_math_answer(answer: str | None) -> str | None:
    if answer is None:
        return None
    s = str(answer).strip()
    s = (
        s.replace("\n", " ")
        .replace("\\!", "")
        .replace("\\,", "")
        .replace("\\;", "")
        .replace("\\:", "")
    )
    s = s.replace("\\displaystyle", "").replace("\\left", "").replace("\\right", "")
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = s.replace("^\\circ", "").replace("^{\\circ}", "").replace("\\circ", "").replace("°", "")
    s = s.replace("\\%", "").replace("%", "").replace("\\$", "").replace("$", "")

    def unit(m: re.Match) -> str:
        inner = m.group(1).strip()
        return "" if inner.lower() in _UNITS or not inner else inner

    s = _TEXT_UNIT.sub(unit, s)
    s = _FRAC_SHORT.sub(r"\\frac{\1}{\2}", s)
    s = _FRAC_SHORT2.sub(r"\\frac{\1}{\2}", s)
    s = _SQRT_SHORT.sub(r"\\sqrt{\1}", s)
    if not re.search(r"[()\[\]{}]", s):  # a bare number: 1,000 -> 1000 (not inside tuples)
        s = _THOUSANDS.sub(lambda m: m.group(1).replace(",", ""), s)
    s = re.sub(r"^\s*[a-zA-Z]\s*=\s*(?=\S)", "", s) if s.count("=") == 1 else s
    s = s.rstrip(".").strip()
    s = re.sub(r"\s+", "", s)
    return s or None


def _verify(pred: str, gold: str) -> bool:
    from math_verify import parse, verify

    try:
        g = parse(f"${gold}$", parsing_timeout=5)
        p = parse(f"${pred}$", parsing_timeout=5)
        if not g or not p:
            return False
        return bool(verify(g, p, timeout_seconds=5))
    except Exception:  # a parse or comparison the library cannot do is not a match
        return False


def math_equal(pred: str | None, gold: str | None) -> bool:
    """Whether a predicted final answer is equivalent to the gold one."""
    if pred is None or gold is None:
        return False
    a, b = normalize_math_answer(pred), normalize_math_answer(gold)
    if a is None or b is None:
        return False
    if a == b:
        return True
    return _verify(pred, gold) or (a != pred.strip() or b != gold.strip()) and _verify(a, b)


def pot_value_to_latex(value) -> str | None:
    """What a program-of-thought ``solution()`` returned, as an answer string (None: no answer)."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            return None
        if abs(value - round(value)) <= 1e-9 * max(1.0, abs(value)):
            return str(int(round(value)))
        return repr(value)
    if isinstance(value, str):
        return value.strip() or None
    if isinstance(value, (list, tuple)):
        parts = [pot_value_to_latex(v) for v in value]
        if not parts or any(p is None for p in parts):
            return None
        return parts[0] if len(parts) == 1 else "(" + ", ".join(parts) + ")"
    return None
