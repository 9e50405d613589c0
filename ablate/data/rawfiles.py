"""What a generated source hands back (``Materialized``) and how it writes its rows
(``write_jsonl``).

The materializers (``toyworld``, ``stdlib_corpus``, ``gsm8k``) need only this module, and
``generated`` (the registry of readers) imports the materializers: one direction, no cycle.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Materialized:
    files: list[str]
    probes: dict = field(default_factory=dict)  # task -> {"path": ..., "count": ..., ...}


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
