"""The taggers a corpora YAML may name (``tagger: code``), built by name so that worker
processes rebuild the same tagger from (name, options) without pickling objects."""

from __future__ import annotations

import importlib

from ablate.data.tagging.base import Tagger
from ablate.errors import AblateError, show

# name -> "module:Class", imported on first use (a worker imports only the tagger it runs)
TAGGERS = {
    "code": "ablate.data.tagging.code:CodeTagger",
    "math": "ablate.data.tagging.math:MathTagger",
}


def tagger_class(name: object, where: str) -> type[Tagger]:
    if not isinstance(name, str) or name not in TAGGERS:
        raise AblateError(f"{where}: {show(name)} is not a tagger (allowed: {', '.join(TAGGERS)})")
    module, cls = TAGGERS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def build_tagger(name: str, options: dict | None, where: str) -> Tagger:
    """The tagger ``name`` with ``options`` (validated: one line naming ``where``)."""
    return tagger_class(name, where)(options or {}, where)


def check_thresholds(tagger: Tagger, thresholds: object, where: str) -> dict[str, float]:
    """The tagger's default thresholds with the YAML's merged over them; a threshold on a score
    the tagger does not produce, or one that is not a number, is one line naming ``where``."""
    from ablate.validate import check_names, check_number

    merged = dict(tagger.thresholds)
    for score, value in check_names(
        thresholds or {}, where, "a mapping score -> threshold"
    ).items():
        if score not in tagger.thresholds:
            produced = ", ".join(tagger.thresholds) or "none"
            raise AblateError(
                f"{where}.{score}: tagger {tagger.name!r} makes no decision on a score "
                f"{show(score)} (thresholds it takes: {produced})"
            )
        merged[score] = check_number(value, f"{where}.{score}")
    return merged
