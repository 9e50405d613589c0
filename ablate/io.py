"""Atomic file writes: readers (and resumed runs) never see half a file.

Everything a later stage reads is written to a temporary name beside its final path and renamed
into place (``os.replace`` is atomic on one file system).
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager


@contextmanager
def atomic_path(path: str):
    """Yield a temporary path to write; on success it becomes ``path``, on error it is removed."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text_atomic(path: str, text: str) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)


def write_json_atomic(path: str, body, indent: int | None = 1) -> None:
    write_text_atomic(path, json.dumps(body, indent=indent) + "\n")
