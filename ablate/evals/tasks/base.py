"""What a task is: a name, a version, the identity of its data, and a ``run`` that scores.

A task's ``fingerprint`` covers everything its numbers depend on besides the checkpoint (its
version, its data files' contents, options such as ``limit`` or the number of shots): ``ablate
eval`` skips a task whose stored result carries the same fingerprint, and re-scores it when
any of those change.
"""

from __future__ import annotations

import hashlib
import json
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

from ablate.errors import AblateError


def option(
    default: Any, help: str, *, flag: str | None = None, metavar: str | None = None, **bounds: float
) -> Any:
    """A field of ``EvalOptions``: its default, its ``ablate eval`` flag (default
    ``--<name-with-dashes>``) and help, and its range (``ge``/``gt``/``le``/``lt``; a value
    of None is never checked). The bounds use the names of ``ablate.validate.checked``, so a
    recipe's ``cadence.eval_options`` is held to the same ranges as the flags."""
    meta = {"help": help, **bounds}
    if flag is not None:
        meta["flag"] = flag
    if metavar is not None:
        meta["metavar"] = metavar
    return field(default=default, metadata=meta)


SEED_MAX = 2**63 - 1


@dataclass
class EvalOptions:
    """What ``ablate eval`` scores with: the one place its flags, defaults and ranges are written
    (``ablate.evals.cli`` generates the flags from these fields; a recipe's
    ``cadence.eval_options`` takes the same names)."""

    limit: int | None = option(
        None, "score only the first N samples of each task (default: all)", ge=1, metavar="N"
    )
    probes: str | None = option(
        None,
        "the probes task scores only these probe files (comma-separated, e.g. "
        "math_answer,math_ladder_1: cheap evaluation inside training; default: all)",
        metavar="NAMES",
    )
    batch_size: int = option(16, "sequences per forward pass", ge=1)
    bpb_tokens: int = option(65_536, "held-out tokens per domain for bpb (whole documents)", ge=1)
    routing_tokens: int = option(4_096, "held-out tokens per domain for the routing capture", ge=1)
    gsm8k_path: str | None = option(
        None,
        "GSM8K test.jsonl (default: ../shared/benchmarks/gsm8k/test.jsonl)",
        flag="--gsm8k",
        metavar="FILE",
    )
    gsm8k_train_path: str | None = option(
        None,
        "where GSM8K's few-shot examples come from (default: train.jsonl beside --gsm8k)",
        flag="--gsm8k-train",
        metavar="FILE",
    )
    num_shots: int = option(4, "few-shot examples for GSM8K (0: zero-shot)", flag="--shots", ge=0)
    max_new_tokens: int = option(256, "generation length limit", ge=1)
    sandbox_timeout_s: float = option(5.0, "wall-clock seconds per sandboxed program", gt=0)
    sandbox_workers: int = option(2, "sandboxed programs run at once", ge=1)
    lm_eval_include: str | None = option(
        None, "a directory of local lm-eval task YAMLs (for lm_eval:<task>)", metavar="DIR"
    )
    allow_unsandboxed_code: bool = option(
        False,
        "let lm-eval code tasks (lm_eval:humaneval, lm_eval:mbpp ...) execute generated "
        "code UNSANDBOXED, in lm-eval's own process with your permissions; off by default",
    )
    mbpp_path: str | None = option(
        None,
        "MBPP mbpp.jsonl (default: ../shared/benchmarks/mbpp/mbpp.jsonl)",
        flag="--mbpp",
        metavar="FILE",
    )
    math_path: str | None = option(
        None,
        "a MATH-format JSONL: problem, solution[, answer, level, subject] "
        "(default: ../shared/benchmarks/math500/test.jsonl)",
        flag="--math",
        metavar="FILE",
    )
    samples: int = option(1, "completions per problem for generative tasks (pass@k)", ge=1)
    temperature: float = option(0.0, "sampling temperature (0: greedy)", ge=0)
    top_p: float = option(
        1.0, "nucleus sampling: keep the top tokens holding this mass", gt=0, le=1
    )
    seed: int = option(0, "sampling seed (scores are deterministic for a seed)", ge=0, le=SEED_MAX)
    pass_k: tuple[int, ...] | None = option(
        None,
        "comma-separated k for pass@k, each <= --samples (default: 1, 10, 100... and --samples)",
        metavar="K,K,...",
    )


@dataclass
class TaskResult:
    metrics: dict[str, float]
    samples: int
    samples_by_metric: dict[str, int] = field(default_factory=dict)
    details: list[dict] = field(
        default_factory=list
    )  # per-sample records (written beside the scores)


class Task(ABC):
    name: str
    version: int = 1
    generative: bool = False  # generation is slow: only run when asked for (or --tasks all)

    def unavailable(self, ctx) -> str | None:
        """Why this task cannot run here (missing data or package), or None."""
        return None

    def validate(self, options: EvalOptions) -> None:
        """Check the task's own input files before any model is loaded (a bad row is one clear
        line in seconds, not after minutes of loading); raises ``AblateError``."""

    def data_identity(self, ctx) -> dict[str, Any]:
        """Whatever identifies this task's inputs (file hashes, options)."""
        return {}

    def outputs(self, run_dir: str, step: int) -> list[str]:
        """Files a scored entry relies on besides the scores: if one is gone, score it again."""
        return []

    def fingerprint(self, ctx) -> str:
        ident = {"task": self.name, "version": self.version, **self.data_identity(ctx)}
        return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[
            :16
        ]

    @abstractmethod
    def run(self, ctx) -> TaskResult: ...


_REPO = os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
)


def benchmark_path(named: str | None, env: str, relative: str) -> tuple[str | None, bool]:
    """A benchmark file: ``named`` (a CLI option), else ``$env``, else ``relative`` (e.g.
    ``../shared/benchmarks/mbpp/mbpp.jsonl``) from the current directory, then from the
    repository's parent. Returns (path or None, whether the user named it)."""
    named = named or os.environ.get(env)
    if named:
        return named, True
    for candidate in (relative, os.path.join(_REPO, relative)):
        if os.path.isfile(candidate):
            return candidate, False
    return None, False


def file_digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def jsonl_objects(path: str):
    """``(n, where, row)`` for every non-blank line ``n`` of a JSONL file, ``where`` naming file
    and line;
    one clear line for a missing file, invalid JSON or a line that is not an object."""
    if not os.path.isfile(path):
        raise AblateError(f"{path}: data file not found")
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}: line {n}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise AblateError(f"{where}: not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise AblateError(f"{where}: expected a JSON object, got {type(row).__name__}")
            yield n, where, row


def read_jsonl(path: str, required: tuple[str, ...], limit: int | None = None) -> list[dict]:
    """Rows of a JSONL file, each checked for ``required`` string fields; one clear line on
    the first bad row."""
    rows = []
    for _, where, row in jsonl_objects(path):
        for key in required:
            if not isinstance(row.get(key), str):
                raise AblateError(
                    f"{where}: field {key!r} must be a string (got {type(row.get(key)).__name__})"
                )
        rows.append(row)
        if limit is not None and len(rows) >= limit:
            break
    if not rows:
        raise AblateError(f"{path}: no rows")
    return rows
