"""Dotted field paths into a recipe: ``stages.1.mix.math.density.math.structured``.

A list item is addressed by its index or by its ``name`` (``stages.0`` or ``stages.math``); a
mapping key by the *longest* key that exists, because domain names contain dots
(``density.math.structured`` is the key ``math.structured`` under ``density``). A path must
exist in the recipe it is applied to: a misspelt field is an error, never a new key.
"""

from __future__ import annotations

import copy
from typing import Any

from ablate.errors import AblateError, show


def resolve(tree: Any, path: str, where: str, optional: dict[tuple, tuple] | None = None) -> list:
    """The keys (and list indices) that ``path`` names in ``tree``; an error if it names nothing.

    ``optional`` maps a parent's keys to field names that may be set there although the tree
    does not hold them yet (a recipe's model section keeps only what the base gives).
    """
    segs = path.split(".")
    if not path or any(s == "" for s in segs):
        raise AblateError(
            f"{where}: {show(path)} is not a dotted field path (like training.optimizer.lr)"
        )
    node, keys, i = tree, [], 0
    last_dict = None  # (its keys, where its key began, its fields): for "no field a.b under x"
    while i < len(segs):
        here = ".".join(map(str, keys)) or "the recipe"
        if isinstance(node, dict):
            by_text = {str(k): k for k in node}
            for j in range(len(segs), i, -1):
                if ".".join(segs[i:j]) in by_text:
                    last_dict = (list(keys), i, sorted(by_text))
                    keys.append(by_text[".".join(segs[i:j])])
                    node, i = node[keys[-1]], j
                    break
            else:
                extra = (optional or {}).get(tuple(keys), ())
                rest = ".".join(segs[i:])
                if rest in extra:
                    keys.append(rest)
                    return keys
                known = sorted(set(by_text) | set(extra))
                raise AblateError(
                    f"{where}: no field {show(segs[i])} under {here} in the recipe "
                    f"(fields there: {', '.join(known) or 'none'})"
                )
        elif isinstance(node, list):
            seg, index = segs[i], None
            if seg.isdigit() and int(seg) < len(node):
                index = int(seg)
            else:
                named = [
                    n
                    for n, item in enumerate(node)
                    if isinstance(item, dict) and item.get("name") == seg
                ]
                if named:
                    index = named[0]
            if index is None:
                names = [
                    str(item.get("name"))
                    for item in node
                    if isinstance(item, dict) and "name" in item
                ]
                listed = f", names {', '.join(names)}" if names else ""
                raise AblateError(
                    f"{where}: {here} has no item {show(seg)} (indices 0-{len(node) - 1}{listed})"
                )
            keys.append(index)
            node, i = node[index], i + 1
        elif last_dict is not None and isinstance(node, (int, float, str, bool)):
            parent, start, known = last_dict
            raise AblateError(
                f"{where}: no field {show('.'.join(segs[start:]))} under "
                f"{'.'.join(map(str, parent)) or 'the recipe'} "
                f"in the recipe (fields there: {', '.join(known)})"
            )
        else:
            raise AblateError(f"{where}: {here} is {show(node)}, it has no field {show(segs[i])}")
    return keys


def assign(tree: Any, keys: list, value: Any) -> None:
    node = tree
    for k in keys[:-1]:
        node = node[k]
    node[keys[-1]] = copy.deepcopy(value)


def dotted(keys: list) -> str:
    return ".".join(map(str, keys))
