"""Generated sources: corpora made by code rather than read from a user's files.

Each generator writes plain JSONL rows (``text``, ``domain``) into the staging directory's
``raw/`` folder, which then goes through the same ingestion path as any user file; the raw rows
stay in the data directory as a record of exactly what was tokenized.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from ablate.data.corpora import Source


@dataclass
class Materialized:
    files: list[str]
    probes: dict = field(default_factory=dict)  # task -> {"path": ..., "count": ..., ...}


def materialize(source: Source, raw_dir: str, seed: int, base_dir: str) -> Materialized:
    os.makedirs(raw_dir, exist_ok=True)
    if source.reader == "toyworld":
        from ablate.data.toyworld import materialize_toyworld

        return materialize_toyworld(source, raw_dir, seed)
    if source.reader == "stdlib":
        from ablate.data.stdlib_corpus import materialize_stdlib

        return materialize_stdlib(source, raw_dir)
    if source.reader == "gsm8k":
        from ablate.data.gsm8k import materialize_gsm8k

        return materialize_gsm8k(source, raw_dir, base_dir)
    raise ValueError(source.reader)


def write_jsonl(path: str, rows) -> int:
    """Write rows as JSONL (atomically); return how many."""
    import orjson

    from ablate.io import atomic_path

    n = 0
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        for row in rows:
            f.write(orjson.dumps(row) + b"\n")
            n += 1
    return n
