"""GSM8K answer extraction: hand-labelled completions, and the whole GSM8K train and test sets."""

from __future__ import annotations

import json
import os
from fractions import Fraction

import pytest

from ablate.errors import AblateError
from ablate.evals.answers import (
    answers_match,
    extract_gsm8k_answer,
    normalize_number,
    pot_value_to_answer,
    reference_answer,
    truncate_at_stop,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (completion, expected answer) -- labelled by hand
CASES = [
    ("#### 18", "18"),
    ("She has 3 + 4 = 7 apples.\n#### 7", "7"),
    ("####18", "18"),
    ("#### 1,080", "1080"),
    ("The total is 2,520,000 dollars.", "2520000"),
    ("He pays $18 in total.", "18"),
    ("#### $1,000.50", "1000.5"),
    ("So she earns 18 dollars.", "18"),
    ("The discount is 18%.", "18"),
    ("The answer is 18.0", "18"),
    ("It costs $18.00 per week.", "18"),
    ("#### +5", "5"),
    ("The temperature drops to -3 degrees.", "-3"),
    ("#### -12", "-12"),
    ("The temperature is \u22124 degrees.", "-4"),
    ("He lost -$5 on the deal.", "-5"),
    ("Each slice is 0.5 of a pie.", "0.5"),
    ("It weighs .25 pounds.", "0.25"),
    ("She drinks 0.50 liters.", "0.5"),
    ("Each gets 3/4 of a cup.", "0.75"),
    ("They split it: 48/2", "24"),
    ("A third is 2/6", "1/3"),
    ("I cannot solve this problem.", None),
    ("", None),
    ("First 12, then 15, and finally 20 marbles.", "20"),
    ("10 - 3 = 7", "7"),
    ("The score was 5-3", "3"),
    ("#### 72\nThis is because 48 + 24 = 72 and 3 more.", "72"),
    ("#### 72\n\nQuestion: Tom has 5 cars and buys 9 more. How many?\nAnswer: 14", "72"),
    ("48 + 24 = 72 clips.\n\nQuestion: A farmer has 12 cows. How many legs?", "72"),
    ("Natalia sold 48/2 = <<48/2=24>>24 clips in May.", "24"),
    ("#### The answer is 42", "42"),
    ("#### forty-two\nSo she has 42 pens", "42"),
    ("So 7 x 3 = 21\nQ: next problem 99", "21"),
    ("The answer is 1,000,000.", "1000000"),
    ("He ran 3.5 km, then 2.25 km: 5.75 km", "5.75"),
    ("The date was 3/4/2020 and she paid 30", "30"),
    ("version v2 of the plan costs 8", "8"),
    # explicit markers before the last number
    ("The answer is 12. Check: 12 - 4 = 8", "12"),
    ("She buys 3 more, so the answer is $1,200 in all and 5 boxes left", "1200"),
    ("First 5, then the answer is 7.\nAnd the answer is 9 (counting 2 more)", "9"),
    ("#### 6\nthe answer is 7", "6"),
    ("A: 42\nbecause 3 + 4 = 7 and 35 more", "42"),
    ("A: 3 + 4 = 7\nso 9 in all", "9"),
    ("The answer is unclear; 3 boxes hold 12", "12"),
]


@pytest.mark.parametrize("text,expected", CASES)
def test_extract_hand_labelled(text, expected):
    assert extract_gsm8k_answer(text) == expected


def test_at_least_25_hand_labelled_cases():
    assert len(CASES) >= 25


def test_truncate_at_stop_takes_the_earliest_stop():
    text = "x = 4\nQ: y\nQuestion: z"
    assert truncate_at_stop(text, ("Question:", "\nQ:")) == "x = 4"
    assert truncate_at_stop(text, ()) == text
    assert truncate_at_stop("no stop here", ("Question:",)) == "no stop here"
    # without stops, the next question's numbers would win
    assert extract_gsm8k_answer("48 clips.\nQuestion: 5 cars", stops=()) == "5"


@pytest.mark.parametrize(
    "raw,canonical",
    [
        ("1,000", "1000"),
        ("$18", "18"),
        ("18.0", "18"),
        ("18.00", "18"),
        ("+7", "7"),
        ("-0.50", "-0.5"),
        ("18 dollars", "18"),
        ("18%", "18"),
        ("3/4", "0.75"),
        ("1/3", "1/3"),
        ("-0", "0"),
        ("007", "7"),
        ("0.125", "0.125"),
        ("no number", None),
        (None, None),
    ],
)
def test_normalize_number(raw, canonical):
    assert normalize_number(raw) == canonical


def test_answers_match_compares_values():
    assert answers_match("18", "18.0")
    assert answers_match("$18", "18")
    assert answers_match("1,000", "1000")
    assert answers_match("0.75", "3/4")
    assert answers_match("17.9999999999", "18")
    assert answers_match("-3", "-3.00")
    assert not answers_match("18", "19")
    assert not answers_match("-18", "18")
    assert not answers_match("18.01", "18")
    assert not answers_match(None, "18")
    assert not answers_match("", "18")
    assert answers_match("yes", "yes") and not answers_match("yes", "no")


def test_reference_answer():
    row = {"question": "q", "answer": "Step 48/2 = <<48/2=24>>24.\n#### 1,080"}
    assert reference_answer(row) == "1080"
    with pytest.raises(AblateError, match="####"):
        reference_answer({"question": "q", "answer": "just text 5"})
    with pytest.raises(AblateError, match="no number"):
        reference_answer({"question": "q", "answer": "text\n#### none"})


@pytest.mark.parametrize(
    "value,answer",
    [
        (18, "18"),
        (18.0, "18"),
        (18.0000001, "18"),
        (17.9999999, "18"),
        (-4.0, "-4"),
        (0.5, "0.5"),
        (0.1 + 0.2, "0.3"),
        (1 / 3, "0.333333"),
        (2.5e6, "2500000"),
        (10**20, "100000000000000000000"),
        (Fraction(3, 4), "0.75"),
        ("18 dollars", "18"),
        ("$1,000", "1000"),
        ("Fraction(3, 4)", "0.75"),
        ([42], "42"),
        ((7,), "7"),
        (True, None),
        (None, None),
        (float("nan"), None),
        (float("inf"), None),
        ([1, 2], None),
        ({"a": 1}, None),
        ("no number", None),
        (complex(1, 2), None),
    ],
)
def test_pot_value_to_answer(value, answer):
    assert pot_value_to_answer(value) == answer


# --- the GSM8K files themselves


def _gsm8k_dir() -> str:
    return os.environ.get("ABLATE_GSM8K_DIR") or os.path.join(
        os.path.dirname(REPO), "shared", "benchmarks", "gsm8k"
    )


def _rows(split: str) -> list[dict]:
    path = os.path.join(_gsm8k_dir(), f"{split}.jsonl")
    if not os.path.exists(path):
        pytest.skip(
            f"GSM8K {split} split not found at {path} "
            "(set ABLATE_GSM8K_DIR to the folder holding train.jsonl and test.jsonl)"
        )
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.mark.parametrize("split,expected_rows", [("train", 7473), ("test", 1319)])
def test_gsm8k_gold_solutions_extract_to_their_labels(split, expected_rows):
    rows = _rows(split)
    assert len(rows) == expected_rows
    wrong = []
    last_agree = 0
    for i, row in enumerate(rows):
        label = reference_answer(row)
        # the label is a canonical integer (GSM8K answers are whole numbers, some with commas)
        assert label == str(int(label)), (i, label)
        if extract_gsm8k_answer(row["answer"]) != label:
            wrong.append((i, row["answer"][-60:], label))
        # the statistic: the last number of the worked solution without its '#### N' line
        worked = row["answer"].rsplit("####", 1)[0]
        last_agree += answers_match(extract_gsm8k_answer(worked), label)
    assert not wrong, f"{len(wrong)} gold solutions do not extract to their label, e.g. {wrong[:3]}"
    rate = last_agree / len(rows)
    print(
        f"\nGSM8K {split}: '####' path {len(rows)}/{len(rows)} (100%); last number without the "
        f"'####' line agrees on {last_agree}/{len(rows)} ({rate:.2%})"
    )
    # a statistic, not a requirement; the bound only catches a broken last-number path
    assert rate > 0.9


def test_extraction_agrees_with_the_labels_of_real_model_solutions():
    """openai/grade-school-math's example_model_solutions.jsonl: 1,319 test problems x 4 models
    (6B/175B, fine-tuned/verifier), each solution labelled is_correct; its format ends with
    ``A: N``. Point ABLATE_GSM8K_MODEL_SOLUTIONS at the file (not shipped in ../shared)."""
    path = os.environ.get("ABLATE_GSM8K_MODEL_SOLUTIONS") or os.path.join(
        _gsm8k_dir(), "example_model_solutions.jsonl"
    )
    if not os.path.isfile(path):
        pytest.skip(
            f"no example_model_solutions.jsonl at {path} (set ABLATE_GSM8K_MODEL_SOLUTIONS)"
        )
    with open(path, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    total, disagree = 0, []
    for row in rows:
        gold = extract_gsm8k_answer(row["ground_truth"])
        for model, sample in row.items():
            if isinstance(sample, dict) and "is_correct" in sample:
                total += 1
                pred = extract_gsm8k_answer(sample["solution"])
                if (pred is not None and answers_match(pred, gold)) != sample["is_correct"]:
                    disagree.append((model, pred, gold))
    assert total == 5276
    assert not disagree, disagree[:5]
