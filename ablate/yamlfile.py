"""Reading YAML input files: one function, ``load_yaml_file``, that every YAML reader uses
(recipes, corpora specs, sweep files), and that turns every way a file can be bad into one line.

- Duplicate keys are an error naming the key and its line (PyYAML keeps the last silently).
- Keys over 100 characters are refused with their line: keys become field paths in messages.
- An alias bomb (a few hundred bytes that expand to 10^9 nodes) is refused before anything
  walks it: aliases may add at most ``MAX_ALIAS_NODES`` nodes to those written in the file.
  A recursive alias and nesting beyond 1,000 levels are refused too.
- Syntax errors keep their line and column; a control character names its line; an integer
  literal over 100 digits is refused with its line (Python will not parse one of 4,300).
- A missing file, a directory, binary junk (not UTF-8), an empty file and a top level that is
  not a mapping are one line each.
- Floats may be written ``1e-3`` (YAML 1.2; PyYAML's 1.1 rules read that as a string), so
  ``1e400`` is a float (inf), refused by the number checks, not a string.

No message embeds an unbounded value (``ablate.errors.show``).
"""

from __future__ import annotations

import os
import re
from typing import Any

import yaml

from ablate.errors import AblateError, show

# Aliases may add at most this many nodes beyond those written in the file: generous for any
# real use of anchors, while the 547-byte "billion laughs" expands to ~10^9.
MAX_ALIAS_NODES = 10_000
MAX_KEY_CHARS = 100  # field names, domains, dotted field paths: all far shorter


class _Refusal(Exception):
    """Raised inside the loader; becomes an AblateError carrying the file name."""


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys and reads YAML 1.2 floats like ``1e-3``."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # '<<' merges may override
                    continue
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                # keys are names and become field paths in messages: a long one is no name
                if isinstance(key, str) and len(key) > MAX_KEY_CHARS:
                    raise _Refusal(
                        f"line {line}: a key of {len(key):,} characters {show(key, 30)} "
                        f"(allowed: at most {MAX_KEY_CHARS})"
                    )
                try:
                    first = seen.get(key)
                except TypeError:  # unhashable: the base class refuses it with its mark
                    continue
                if first is not None:
                    raise _Refusal(
                        f"line {line}: duplicate key {show(key)} (first at line {first}; "
                        "each key may appear once)"
                    )
                seen[key] = line
        return super().construct_mapping(node, deep=deep)

    def construct_yaml_int(self, node):
        # Python refuses to parse ints of over 4,300 digits (ValueError, no line): say where
        if len(node.value) > 100:
            raise _Refusal(
                f"line {node.start_mark.line + 1}: an integer of {len(node.value)} digits "
                "(allowed: at most 100)"
            )
        return super().construct_yaml_int(node)


_Loader.add_constructor("tag:yaml.org,2002:int", _Loader.construct_yaml_int)
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _expanded_size(root) -> int:
    """Nodes in the document with every alias expanded; refuses a cycle and stops counting at
    the bound (memoized per node, so a bomb costs a few thousand steps, not 10^9)."""
    sizes: dict[int, int] = {}
    limit = MAX_ALIAS_NODES * 100

    def size(node, depth: int, stack: set) -> int:
        if id(node) in sizes:
            return sizes[id(node)]
        if id(node) in stack:
            raise _Refusal(
                f"line {node.start_mark.line + 1}: an alias refers to itself (recursive "
                "structures are not allowed)"
            )
        if depth > 1000:
            raise _Refusal(f"line {node.start_mark.line + 1}: nested more than 1000 levels deep")
        stack.add(id(node))
        total = 1
        if isinstance(node, yaml.SequenceNode):
            children = node.value
        elif isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        else:
            children = []
        for child in children:
            total = min(limit, total + size(child, depth + 1, stack))
        stack.discard(id(node))
        sizes[id(node)] = total
        return total

    return size(root, 0, set())


def _distinct_nodes(root) -> int:
    seen, todo = set(), [root]
    while todo:
        node = todo.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            todo.extend(node.value)
        elif isinstance(node, yaml.MappingNode):
            todo.extend(n for pair in node.value for n in pair)
    return len(seen)


def load_yaml_file(path: str, what: str, mapping: bool = True) -> Any:
    """Parse a YAML file, turning every way it can fail into one located line.

    With ``mapping`` (every caller today) the top level must be a mapping with string keys."""
    if os.path.isdir(path):
        raise AblateError(f"{path}: is a directory, not a {what}")
    if not os.path.isfile(path):
        raise AblateError(f"{path}: no such {what}")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise AblateError(f"{path}: cannot read the {what} ({exc.strerror or exc})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise AblateError(
            f"{path}: not valid YAML (not UTF-8 text: byte {data[exc.start]:#04x} "
            f"at offset {exc.start})"
        ) from None
    try:
        loader = _Loader(text)
    except yaml.reader.ReaderError as exc:  # a control character: the reader names its offset
        line = text.count("\n", 0, exc.position) + 1
        raise AblateError(
            f"{path}: line {line}: not valid YAML (character {exc.character!r} is not allowed)"
        ) from None
    try:
        node = loader.get_single_node()
        if node is not None and _expanded_size(node) - _distinct_nodes(node) > MAX_ALIAS_NODES:
            raise _Refusal(
                f"aliases expand to more than {MAX_ALIAS_NODES:,} extra nodes "
                "(an alias bomb?); write the values out"
            )
        value = loader.construct_document(node) if node is not None else None
    except _Refusal as exc:
        raise AblateError(f"{path}: {exc}") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = (exc.problem or exc.context or "syntax error").strip()
        raise AblateError(f"{path}: {where}not valid YAML ({_clip(problem)})") from None
    except RecursionError:  # the composer recurses once per level
        raise AblateError(
            f"{path}: not valid YAML (nested too deeply; allowed: a few hundred levels)"
        ) from None
    except yaml.YAMLError as exc:
        raise AblateError(f"{path}: not valid YAML ({_clip(str(exc).splitlines()[0])})") from None
    finally:
        loader.dispose()
    if mapping:
        if value is None:
            raise AblateError(
                f"{path}: the {what} is empty (expected a YAML mapping of 'key: value' lines)"
            )
        if not isinstance(value, dict):
            raise AblateError(
                f"{path}: expected a YAML mapping of 'key: value' lines at the top of the "
                f"{what}, got {kind_of(value)}"
            )
    return value


def _clip(text: str, limit: int = 100) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def kind_of(value: Any) -> str:
    """A few words for the type of a YAML value, for messages ("a list", "a mapping")."""
    return {
        dict: "a mapping",
        list: "a list",
        str: "a string",
        bool: "true/false",
        int: "an integer",
        float: "a number",
        type(None): "nothing (null)",
    }.get(type(value), type(value).__name__)
