"""``reader: files``: a directory (or glob) of raw documents, one file per document.

Real corpora often come as trees of files (a code dump, a folder of notebooks or Markdown
pages). Each file becomes one JSONL row in the staging ``raw/`` folder, ``{"text", "path"
(relative to the corpora YAML), "kind" (by extension: python, notebook, markdown, text)}``, and
then takes the same way as every other source. With a ``tagger`` the kind tells it how to read
the file (a notebook cell by cell); without one, the source's ``domain`` tags every file and the
text is trained on as it is.

A file that is not UTF-8 text is one line naming it, or, with ``on_invalid: skip``, skipped
and counted.
"""

from __future__ import annotations

import os
import sys

from ablate.data.corpora import Source
from ablate.data.rawfiles import Materialized, write_jsonl
from ablate.data.tagging.base import kind_of_path
from ablate.errors import DataError


def materialize_files(
    source: Source, files: list[str], raw_dir: str, base_dir: str
) -> Materialized:
    os.makedirs(raw_dir, exist_ok=True)
    skipped = 0

    def rows():
        nonlocal skipped
        for path in files:
            try:
                with open(path, "rb") as f:
                    data = f.read()
            except OSError as exc:
                from ablate.data.ingest import read_error

                raise read_error(path, exc) from None
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError as exc:
                if source.on_invalid == "skip":
                    skipped += 1
                    continue
                raise DataError(
                    f"{path}: not UTF-8 text (invalid byte at {exc.start}); convert it, or set "
                    "on_invalid: skip on the source"
                ) from None
            shown = os.path.relpath(path, base_dir)
            row = {"text": text, "path": shown, "kind": kind_of_path(path)}
            if source.domain:
                row["domain"] = source.domain
            yield row

    out = os.path.join(raw_dir, f"{source.name}.jsonl")
    write_jsonl(out, rows())
    if skipped:
        print(f"note: {source.where}: skipped {skipped} files that are not UTF-8", file=sys.stderr)
    return Materialized([out])
