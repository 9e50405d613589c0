"""The domain taxonomy: hierarchical, dot-separated tags, defined here and nowhere else.

A tag names what kind of data a dataset holds (``math.structured``); a *selector* names a tag
and everything below it (``math`` selects ``math.text``, ``math.structured``, ...). Users extend
the taxonomy by declaring new tags (``domains: [science.physics]`` in a corpora YAML); the
declared tags travel in the manifest so every later stage validates against the same set.
"""

from __future__ import annotations

import re
from typing import Callable, Iterable

from ablate.errors import AblateError, show

# tag -> what belongs there. The research questions (see the design notes) need code split into
# executable programs vs code mixed with prose, and math split by how structured its reasoning is.
BUILTIN_DOMAINS: dict[str, str] = {
    "code": "source code of any kind",
    "code.exec": "standalone executable programs, code only",
    "code.nl": "code interleaved with natural language: docstrings, doctests, notebooks",
    "code.text": "prose about code: documentation, tutorials, Q&A without runnable programs",
    "math": "mathematics of any kind",
    "math.text": "math problems with prose solutions",
    "math.structured": "math problems with step-by-step structured solutions",
    "math.structured.socratic": "structured solutions as sub-question / answer pairs",
    "math.code": "math reasoning steps paired with the code that carries them out",
    "general": "general text and world knowledge",
}

_TAG_RE = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*$")


def is_under(tag: str, selector: str) -> bool:
    """True when ``tag`` is ``selector`` or lies below it in the hierarchy."""
    return tag == selector or tag.startswith(selector + ".")


class Taxonomy:
    """The set of known tags: the built-in ones plus any a user declared."""

    def __init__(self, extra: Iterable[str] = (), where: str = "domains"):
        self.extra: list[str] = []
        self._tags = dict(BUILTIN_DOMAINS)
        for i, tag in enumerate(extra):
            if not isinstance(tag, str) or not _TAG_RE.match(tag):
                raise AblateError(
                    f"{where}[{i}]: {show(tag)} is not a valid domain tag "
                    "(lower-case words joined by dots, e.g. 'science.physics')"
                )
            # Declaring a.b.c implicitly declares a and a.b, so selectors work at every level.
            parts = tag.split(".")
            for depth in range(1, len(parts) + 1):
                ancestor = ".".join(parts[:depth])
                if ancestor not in self._tags:
                    self._tags[ancestor] = "user-declared"
            if tag not in BUILTIN_DOMAINS and tag not in self.extra:
                self.extra.append(tag)

    @property
    def tags(self) -> list[str]:
        return sorted(self._tags)

    def __contains__(self, tag: str) -> bool:
        return tag in self._tags

    def validate(self, tag: object, where: str | Callable[[], str]) -> str:
        """Return ``tag`` if known, else raise a one-line error naming ``where`` and the
        allowed tags.

        ``where`` may be a function making the location, called only for the error: per-row
        callers must not pay for building 'file: line N' on every valid row.
        """
        if isinstance(tag, str) and tag in self._tags:
            return tag
        if callable(where):
            where = where()
        raise AblateError(
            f"{where}: {show(tag)} is not a known domain (allowed: {', '.join(self.tags)}; "
            "declare new ones under 'domains')"
        )

    def select(self, selector: str, tags: Iterable[str], where: str) -> list[str]:
        """The tags among ``tags`` that ``selector`` covers, validating the selector itself."""
        self.validate(selector, where)
        return [t for t in tags if is_under(t, selector)]
