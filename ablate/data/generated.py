"""Generated sources: corpora made by code rather than read from a user's files.

Each generator writes plain JSONL rows (``text``, ``domain``) into the staging directory's
``raw/`` folder, which then goes through the same ingestion path as any user file; the raw rows
stay in the data directory as a record of exactly what was tokenized.

``MATERIALIZERS`` is the registry, one entry per generated reader of the corpora spec. The
materializers import only ``rawfiles`` (never this module), so the imports run one way.
"""

from __future__ import annotations

import os
from typing import Callable

from ablate.data.benchmark_corpora import materialize_hendrycks_math, materialize_mbpp
from ablate.data.corpora import GENERATED_READERS, Source
from ablate.data.gsm8k import materialize_gsm8k
from ablate.data.rawfiles import Materialized, write_jsonl
from ablate.data.stdlib_corpus import materialize_stdlib
from ablate.data.toyworld import materialize_toyworld

__all__ = ["MATERIALIZERS", "Materialized", "materialize", "raw_file", "write_jsonl"]

# reader -> fn(source, raw_dir, seed, base_dir): one signature, whatever each generator needs
MATERIALIZERS: dict[str, Callable[[Source, str, int, str], Materialized]] = {
    "toyworld": lambda source, raw_dir, seed, base_dir: materialize_toyworld(source, raw_dir, seed),
    "stdlib": lambda source, raw_dir, seed, base_dir: materialize_stdlib(source, raw_dir),
    "gsm8k": lambda source, raw_dir, seed, base_dir: materialize_gsm8k(source, raw_dir, base_dir),
    "mbpp": lambda source, raw_dir, seed, base_dir: materialize_mbpp(source, raw_dir, base_dir),
    "hendrycks_math": lambda source, raw_dir, seed, base_dir: materialize_hendrycks_math(
        source, raw_dir, base_dir
    ),
}
assert set(MATERIALIZERS) == set(GENERATED_READERS), "a generated reader without a materializer"


def materialize(source: Source, raw_dir: str, seed: int, base_dir: str) -> Materialized:
    os.makedirs(raw_dir, exist_ok=True)
    return MATERIALIZERS[source.reader](source, raw_dir, seed, base_dir)


def raw_file(source_name: str) -> str:
    """Where, relative to the data directory, a generated source's rows are kept (every
    materializer writes ``raw/<source name>.jsonl``; ``--overwrite`` relies on it)."""
    return os.path.join("raw", f"{source_name}.jsonl")
