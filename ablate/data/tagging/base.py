"""The tagger interface: a pure function document -> segments, each with scores; the domain is
decided from the scores and the thresholds, separately, so that a density sweep re-thresholds
stored scores without tagging again.

A tagger

* declares its ``name``, ``version`` (bump it whenever the scores it produces for some input
  change), the ``domains`` its decision can return, the ``scores`` it produces and, for those
  a threshold may be set on, the default ``thresholds``;
* validates its options in ``__init__`` (one-line ``AblateError`` naming ``where``);
* ``segments(doc)`` returns the document's segments in document order (one segment for the
  whole document unless the tagger was asked to segment), each with its scores; it raises
  ``SkipDocument`` for input it cannot read (a notebook that is not valid JSON), which the
  driver counts or refuses as the corpora YAML says;
* ``decide(scores, thresholds)`` returns one of ``domains``; ``thresholds`` holds every key of
  the default ``thresholds`` (the YAML's values merged over the defaults).

Taggers run in worker processes: they must be picklable by name (built from ``name`` and
``options`` through the registry), deterministic, and import nothing heavy (no torch).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

# Document kinds: how the text is to be read. A file source gets its kind from the extension
# (``kind_of_path``); a row of a JSONL/Parquet source is "auto" unless the source says.
KINDS = ("auto", "python", "notebook", "markdown", "text")


@dataclass(frozen=True)
class Document:
    text: str
    kind: str = "auto"  # one of KINDS


@dataclass
class Segment:
    text: str
    scores: dict[str, float] = field(default_factory=dict)


class SkipDocument(Exception):
    """This document cannot be tagged (e.g. a notebook that is not valid JSON); the message
    says why in a few words. Counted per reason, or refused, as the corpora YAML says."""


class Tagger:
    name: ClassVar[str]
    version: ClassVar[str]
    domains: ClassVar[tuple[str, ...]]
    scores: ClassVar[tuple[str, ...]]
    thresholds: ClassVar[dict[str, float]]  # score -> default threshold (score >= t decides)

    def __init__(self, options: dict | None = None, where: str = "tagger_options"):
        from ablate.validate import check_names

        self.options = dict(check_names(options or {}, where, "a mapping of tagger options"))
        self.where = where

    def segments(self, doc: Document) -> list[Segment]:
        raise NotImplementedError

    def decide(self, scores: dict[str, float], thresholds: dict[str, float]) -> str:
        raise NotImplementedError

    def describe(self) -> dict:
        """What the manifest records: name, version and the options (with their defaults)."""
        return {"name": self.name, "version": self.version, "options": self.options}


def kind_of_path(path: str) -> str:
    """A file's document kind, by extension."""
    lower = path.lower()
    if lower.endswith((".py", ".pyw", ".pyi")):
        return "python"
    if lower.endswith(".ipynb"):
        return "notebook"
    if lower.endswith((".md", ".markdown", ".rst", ".mdx")):
        return "markdown"
    return "text"
