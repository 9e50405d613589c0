"""MBPP: the file's rows, the paper's 3-shot prompt, and every reference solution through the
sandbox.

The reference-solution check runs 973 programs through the real sandbox (about 30 s on 2 cores).
"""

from __future__ import annotations

import json
import os

import pytest

from ablate.errors import AblateError
from ablate.evals.execution import check_programs
from ablate.evals.tasks.mbpp import (
    SHOT_IDS,
    TEST_IDS,
    few_shot_header,
    prompt,
    read_mbpp,
    execution_case,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MBPP = os.path.join(os.path.dirname(REPO), "shared", "benchmarks", "mbpp", "mbpp.jsonl")
SLOW_REFERENCE = 123  # amicable_numbers_sum(9999) takes about 14 s (SOURCE.md)


@pytest.fixture(scope="module")
def rows():
    if not os.path.isfile(MBPP):
        pytest.skip(f"MBPP not found at {MBPP}")
    return read_mbpp(MBPP)


def test_splits_and_prompt(rows):
    assert len(rows) == 974 and sum(i in rows for i in TEST_IDS) == 500
    header = few_shot_header(rows, MBPP)
    assert header.count("[BEGIN]") == header.count("[DONE]") == 3 and "\r" not in header
    assert header.startswith(
        "You are an expert Python programmer, and here is your task: " + rows[2]["text"]
    )
    p = prompt(rows[11])
    assert p.endswith("\n[BEGIN]\n") and all(t in p for t in rows[11]["test_list"])
    assert [i for i in SHOT_IDS] == [2, 3, 4]


@pytest.mark.slow  # 973 sandboxed programs: 30-50 s on 2 shared cores
def test_every_reference_solution_passes_through_the_sandbox(rows):
    """All but task 123 (slow by design). Tasks 367 and 927, which fail when their setup code runs
    before the solution, pass: the solution goes first."""
    ids = [i for i in sorted(rows) if i != SLOW_REFERENCE]
    verdicts = check_programs([execution_case(rows[i], rows[i]["code"]) for i in ids], timeout_s=10)
    failed = [(i, v.reason, v.exception, v.detail) for i, v in zip(ids, verdicts) if not v.passed]
    assert not failed
    assert len(ids) == 973 and {367, 927} <= set(ids)


def test_wrong_and_empty_solutions_fail(rows):
    cases = [
        execution_case(rows[11], ""),
        execution_case(rows[11], "def remove_Occ(s, ch):\n    return s\n"),
        execution_case(rows[11], "import sys\nsys.exit(0)\n"),
    ]
    assert [v.reason for v in check_programs(cases)] == ["exception", "assertion", "no-proof"]


@pytest.mark.parametrize(
    "row,fragments",
    [
        (
            {"task_id": 11, "text": "t", "code": "c", "test_list": []},
            ["line 1", "test_list", "non-empty list"],
        ),
        ({"task_id": 11, "text": "t", "code": "c"}, ["line 1", "test_list"]),
        (
            {"task_id": "11", "text": "t", "code": "c", "test_list": ["assert 1"]},
            ["task_id", "integer"],
        ),
        ({"task_id": 11, "text": "", "code": "c", "test_list": ["assert 1"]}, ["'text'"]),
        (
            {
                "task_id": 11,
                "text": "t",
                "code": "c",
                "test_list": ["assert 1"],
                "test_setup_code": 3,
            },
            ["test_setup_code"],
        ),
    ],
)
def test_bad_rows_are_one_clear_error(tmp_path, row, fragments):
    path = tmp_path / "mbpp.jsonl"
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(AblateError) as e:
        read_mbpp(str(path))
    assert str(path) in str(e.value) and "\n" not in str(e.value)
    for f in fragments:
        assert f in str(e.value)
