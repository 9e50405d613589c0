"""MATH answers: extraction from LaTeX, equivalence, and the MATH-500 file itself.

The hand-made table holds equivalent and non-equivalent pairs of the forms MATH answers take;
every one of the 500 MATH-500 gold ``\\boxed{}`` answers in ``solution`` must be judged equal to
the row's ``answer`` (the data is read from ``../shared/benchmarks``, never copied).
"""

from __future__ import annotations

import json
import os

import pytest

pytest.importorskip("math_verify")

from ablate.evals.math_answers import (  # noqa: E402
    _verify,
    extract_math_answer,
    last_boxed,
    math_equal,
    normalize_math_answer,
    pot_value_to_latex,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MATH500 = os.path.join(os.path.dirname(REPO), "shared", "benchmarks", "math500", "test.jsonl")

# (prediction, gold, equivalent?) -- made by hand
PAIRS = [
    ("0.5", "\\frac12", True),
    ("\\frac{1}{2}", "\\dfrac{1}{2}", True),
    ("\\tfrac{3}{4}", "0.75", True),
    ("\\frac{-2}{3}", "-\\frac{2}{3}", True),
    ("2\\sqrt{2}", "\\sqrt{8}", True),
    ("\\sqrt2", "\\sqrt{2}", True),
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\frac{\\pi}{2})", True),
    ("90^\\circ", "90", True),
    ("90^{\\circ}", "90^\\circ", True),
    ("10\\%", "10", True),
    ("\\$18.90", "18.90", True),
    ("18.9", "18.90", True),
    ("5\\text{ cm}", "5", True),
    ("12 \\text{ inches}", "12", True),
    ("\\text{(C)}", "\\text{(C)}", True),
    ("1,000,000", "1000000", True),
    ("10,080", "10080", True),
    ("[2,5)", "[2, 5)", True),
    ("(-\\infty, 3]", "(-\\infty,3]", True),
    ("(1,2)", "\\left(1, 2\\right)", True),
    ("\\{1,2,3\\}", "\\{3,2,1\\}", True),
    ("x^2+2x+1", "(x+1)^2", True),
    ("x = 4", "4", True),
    ("\\frac{\\sqrt{3}}{2}", "\\frac{1}{2}\\sqrt{3}", True),
    ("2\\pi", "\\pi \\cdot 2", True),
    ("1.5", "\\frac{3}{2}", True),
    ("-3", "-3.0", True),
    ("\\frac{14}{3}", "\\frac{28}{6}", True),
    ("3+2i", "2i+3", True),
    ("\\frac{1}{\\sqrt{2}}", "\\frac{\\sqrt{2}}{2}", True),
    # not equivalent
    ("[1,2]", "(1,2]", False),
    ("(1,2)", "(2,1)", False),
    ("2", "\\frac12", False),
    ("\\sqrt{2}", "2", False),
    ("x+1", "x-1", False),
    ("3", "30", False),
    ("0.33", "\\frac{1}{3}", False),
    ("1000", "100", False),
    ("-4", "4", False),
    ("\\frac{2}{3}", "\\frac{3}{2}", False),
    ("2\\sqrt{3}", "3\\sqrt{2}", False),
    ("(3,4)", "(3,4,5)", False),
    ("\\text{(A)}", "\\text{(C)}", False),
    ("10", "10\\sqrt{2}", False),
    ("\\pi", "3", False),
    ("", "5", False),
    ("x^2", "2x", False),
    ("(-\\infty, 3)", "(-\\infty, 3]", False),
]


def test_the_table_has_at_least_40_pairs_of_both_kinds():
    assert len(PAIRS) >= 40
    assert sum(e for *_, e in PAIRS) >= 15 and sum(not e for *_, e in PAIRS) >= 15


@pytest.mark.parametrize("pred,gold,equivalent", PAIRS)
def test_hand_made_pairs_are_judged_right(pred, gold, equivalent):
    assert math_equal(pred, gold) == equivalent
    assert math_equal(gold, pred) == equivalent  # symmetric


@pytest.mark.parametrize(
    "text,answer",
    [
        ("so $x = \\boxed{\\frac{1}{2}}$.", "\\frac{1}{2}"),
        (
            "first \\boxed{3}, finally \\boxed{\\left(1, \\frac{2}{\\sqrt{3}}\\right)}",
            "\\left(1, \\frac{2}{\\sqrt{3}}\\right)",
        ),
        ("nested \\boxed{\\{1, \\{2\\}\\}} end", "\\{1, \\{2\\}\\}"),
        ("the value is \\boxed 5$.", "5"),
        ("\\fbox{7}", "7"),
        ("$4$.\nFinal Answer: The final answer is $[2,5)$. I hope it is correct.", "[2,5)"),
        ("The final answer is 16", "16"),
        ("no answer here", None),
        ("", None),
        ("\\boxed{unclosed", None),
        ("The final answer is $3$.\nProblem:\nNext one \\boxed{9}", "3"),
    ],
)
def test_extract_math_answer(text, answer):
    assert extract_math_answer(text) == answer


def test_last_boxed_takes_the_last_and_matches_braces():
    assert last_boxed("\\boxed{a} and \\boxed{b{c}d}") == "b{c}d"
    assert last_boxed(None) is None


def test_normal_forms():
    assert normalize_math_answer("\\left( 1, 2 \\right)") == "(1,2)"
    assert normalize_math_answer("\\dfrac12") == "\\frac{1}{2}"
    assert normalize_math_answer("1,234") == "1234"
    assert normalize_math_answer("(1,234)") == "(1,234)"  # a tuple keeps its comma
    assert normalize_math_answer("45^\\circ") == "45"
    assert normalize_math_answer("x = 3.") == "3"


@pytest.mark.parametrize(
    "value,text",
    [
        (3, "3"),
        (3.0, "3"),
        (0.5, "0.5"),
        ("\\frac{1}{3}", "\\frac{1}{3}"),
        ([1, 2], "(1, 2)"),
        ([5], "5"),
        (True, None),
        (None, None),
        (float("nan"), None),
        ({"a": 1}, None),
    ],
)
def test_pot_value_to_latex(value, text):
    assert pot_value_to_latex(value) == text


def test_every_math500_gold_boxed_answer_is_judged_equal_to_its_answer():
    if not os.path.isfile(MATH500):
        pytest.skip(f"MATH-500 not found at {MATH500}")
    with open(MATH500, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    assert len(rows) == 500
    wrong, unverified = [], []
    for r in rows:
        boxed = extract_math_answer(r["solution"])
        if not math_equal(boxed, r["answer"]):
            wrong.append((r["unique_id"], boxed, r["answer"]))
        if not _verify(
            boxed, r["answer"]
        ):  # and math-verify alone, not only the string normal form
            unverified.append((r["unique_id"], boxed, r["answer"]))
    assert not wrong, wrong[:5]
    assert not unverified, unverified[:5]
