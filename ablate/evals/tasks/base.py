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


@dataclass
class EvalOptions:
    limit: int | None = None            # score only the first N samples of each task (None: all)
    batch_size: int = 16
    bpb_tokens: int = 65_536            # held-out tokens per domain for bits per byte
    routing_tokens: int = 4_096         # held-out tokens per domain for eval-time routing capture
    gsm8k_path: str | None = None       # GSM8K test.jsonl (default: ../shared/benchmarks/gsm8k/test.jsonl)
    gsm8k_train_path: str | None = None  # where the few-shot examples come from (default: beside gsm8k_path)
    num_shots: int = 4
    max_new_tokens: int = 256
    sandbox_timeout_s: float = 5.0
    sandbox_workers: int = 2
    lm_eval_include: str | None = None   # a directory of local lm-eval task YAMLs
    allow_unsandboxed_code: bool = False  # let lm-eval code tasks run generated code outside the sandbox
    mbpp_path: str | None = None         # mbpp.jsonl (default: ../shared/benchmarks/mbpp/mbpp.jsonl)
    math_path: str | None = None         # a MATH-format JSONL (default: ../shared/benchmarks/math500/test.jsonl)
    samples: int = 1                     # completions per problem for generative tasks
    temperature: float = 0.0             # 0: greedy
    top_p: float = 1.0
    seed: int = 0                        # sampling seed
    pass_k: tuple[int, ...] | None = None  # the k of pass@k (default: 1, 10, 100... up to samples, and samples)


@dataclass
class TaskResult:
    metrics: dict[str, float]
    samples: int
    samples_by_metric: dict[str, int] = field(default_factory=dict)
    details: list[dict] = field(default_factory=list)  # per-sample records (written beside the scores)


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
        return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:16]

    @abstractmethod
    def run(self, ctx) -> TaskResult:
        ...


_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


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
    """``(n, where, row)`` for every non-blank line ``n`` of a JSONL file, ``where`` naming file and line;
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
                raise AblateError(f"{where}: field {key!r} must be a string (got {type(row.get(key)).__name__})")
        rows.append(row)
        if limit is not None and len(rows) >= limit:
            break
    if not rows:
        raise AblateError(f"{path}: no rows")
    return rows
