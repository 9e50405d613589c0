"""The labelled evaluation set of the taggers: references to real public text, each with the
domain a tagger should give it, rebuilt into texts on load.

The repository never holds benchmark text: ``tests/data/tagging/labels.jsonl`` holds one row per
document, ``{"id", "tagger", "label", "split", "ref", "rule"}`` (plus ``note`` on uncertain hand
labels), and ``load_labelled`` rebuilds each text from its ``ref``:

* ``stdlib_stripped`` / ``stdlib_module``: a standard-library module (path relative to
  ``sysconfig.get_paths()["stdlib"]``) with its docstrings and comments removed
  (``stdlib_corpus.strip_docs_and_comments``: code.exec) or as shipped (code.nl);
* ``pydoc_topic``: a key of ``pydoc_data.topics.topics``, the language reference's prose
  (code.text);
* ``mbpp``: an MBPP ``task_id`` (the ``code`` field, code.exec), never from the test range 11-510;
* ``gsm8k``: a 1-based ``line`` of GSM8K's train.jsonl and a ``render`` (``structured``,
  ``prose``, ``code``: ``ablate.data.gsm8k.as_structured`` / ``as_prose`` / ``as_code``);
* ``math500``: a MATH-500 ``unique_id`` (problem and solution), labelled by hand.

The automatic part of the set is chosen by the rules in ``selected_rows`` (sorted lists, every
k-th item), so ``python -m ablate.data.tagging.labelled --write`` rebuilds the file's automatic
rows exactly, keeping its hand-labelled MATH-500 rows; tests/data/tagging/PROVENANCE.md states the
rules. ``split`` (dev: tune on it; test: report it) comes from a SHA-256 of the document's
*group* (the id without its render: a GSM8K problem's three renders, or a module's two, share
a split), so tuning never sees a test problem in another format.

(Over 400 lines as ruff lays it out: each reference kind's rebuild sits beside the rule that
selects it, so the file and PROVENANCE.md can be checked against each other.)
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import os
import sys
import sysconfig
from dataclasses import dataclass, field

from ablate.errors import AblateError, show

_REPO = os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
)
DEFAULT_PATH = os.path.join(_REPO, "tests", "data", "tagging", "labels.jsonl")

# benchmark -> (environment variable naming its file, path relative to the repository's parent)
BENCHMARKS = {
    "gsm8k": (
        "ABLATE_GSM8K_TRAIN",
        os.path.join("..", "shared", "benchmarks", "gsm8k", "train.jsonl"),
    ),
    "mbpp": ("ABLATE_MBPP", os.path.join("..", "shared", "benchmarks", "mbpp", "mbpp.jsonl")),
    "math500": ("ABLATE_MATH", os.path.join("..", "shared", "benchmarks", "math500", "test.jsonl")),
}
# MBPP's test split: evaluation data, never in a labelled set we tune on.
MBPP_TEST_RANGE = range(11, 511)
MBPP_ALLOWED = tuple(range(1, 11)) + tuple(range(511, 975))

GSM8K_RENDERS = {"structured": "math.structured", "prose": "math.text", "code": "math.code"}
# ref kind -> the document kind a real corpus row of that text would carry
_KINDS = {
    "stdlib_stripped": "python",
    "stdlib_module": "python",
    "mbpp": "python",
    "pydoc_topic": "text",
    "gsm8k": "auto",
    "math500": "auto",
}
TAGGERS = ("code", "math")
# How many documents the automatic rules aim at per class (each takes every k-th item of its
# sorted candidates with k = candidates // TARGET, so it gets at least TARGET).
TARGET = 70
# A module is a code.nl example when its docstrings and comments make at least this share of
# its non-blank lines (and it has a module docstring): prose is a real part of the file.
NL_SHARE = 0.3
MIN_CODE_LINES = 20


@dataclass(frozen=True)
class LabelledDoc:
    id: str
    tagger: str
    label: str
    split: str
    text: str
    kind: str
    ref: dict = field(hash=False)


def split_of(doc_id: str) -> str:
    """dev or test, from the SHA-256 of the document's group (``group_of``): deterministic and
    independent of the order of the file."""
    digest = hashlib.sha256(group_of(doc_id).encode("utf-8")).digest()
    return "dev" if digest[0] % 2 == 0 else "test"


def group_of(doc_id: str) -> str:
    """The id without its render: ``gsm8k-prose:17`` -> ``gsm8k:17``, ``stdlib-nl:json`` ->
    ``stdlib:json``."""
    prefix, _, rest = doc_id.partition(":")
    for family in ("gsm8k", "stdlib"):
        if prefix.startswith(family + "-"):
            return f"{family}:{rest}"
    return doc_id


# ---------------------------------------------------------------------------------------------
# benchmark files


def benchmark_file(name: str, benchmarks: str | None = None) -> str:
    """A benchmark's file: under ``benchmarks`` (a directory laid out like
    ../shared/benchmarks) if given, else found as the eval tasks find it (environment variable,
    then ../shared/benchmarks from the current directory or the repository)."""
    from ablate.evals.tasks.base import benchmark_path

    env, relative = BENCHMARKS[name]
    if benchmarks is not None:
        path = os.path.join(benchmarks, *relative.split(os.sep)[3:])
    else:
        path = benchmark_path(None, env, relative)[0]
        if path is None:
            raise AblateError(
                f"labelled set: {name}: no file at {relative} (set {env} or pass benchmarks=)"
            )
    if not os.path.isfile(path):
        raise AblateError(f"labelled set: {name}: {path} is not a file")
    return path


def _jsonl(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


class _Sources:
    """The texts references point into, each read once and only when first needed."""

    def __init__(self, benchmarks: str | None):
        self.benchmarks = benchmarks
        self._cache: dict[str, object] = {}

    def _get(self, key: str, load):
        if key not in self._cache:
            self._cache[key] = load()
        return self._cache[key]

    def gsm8k(self) -> list[dict]:
        return self._get("gsm8k", lambda: _jsonl(benchmark_file("gsm8k", self.benchmarks)))

    def mbpp(self) -> dict[int, dict]:
        return self._get(
            "mbpp",
            lambda: {r["task_id"]: r for r in _jsonl(benchmark_file("mbpp", self.benchmarks))},
        )

    def math500(self) -> dict[str, dict]:
        return self._get(
            "math500",
            lambda: {r["unique_id"]: r for r in _jsonl(benchmark_file("math500", self.benchmarks))},
        )


def stdlib_root() -> str:
    return sysconfig.get_paths()["stdlib"]


def _module_source(module: str, where: str) -> tuple[str, ast.Module]:
    path = os.path.join(stdlib_root(), *module.split("/"))
    if not module.endswith(".py") or not os.path.isfile(path):
        raise AblateError(
            f"{where}: ref.module {show(module)} is not a module of this Python's standard library"
        )
    with open(path, encoding="utf-8") as f:
        source = f.read()
    return source, ast.parse(source)


def rebuild(ref: dict, sources: _Sources, where: str) -> str:
    """The text a reference points to; one clear line when it does not resolve."""
    from ablate.data import gsm8k
    from ablate.data.stdlib_corpus import strip_docs_and_comments

    kind = ref.get("kind")
    if kind == "stdlib_stripped":
        code = strip_docs_and_comments(*_module_source(ref.get("module"), where))
        if not code:
            raise AblateError(f"{where}: {ref['module']} does not strip to parseable code")
        return code
    if kind == "stdlib_module":
        return _module_source(ref.get("module"), where)[0]
    if kind == "pydoc_topic":
        from pydoc_data.topics import topics

        if ref.get("topic") not in topics:
            raise AblateError(f"{where}: ref.topic {show(ref.get('topic'))} is not a pydoc topic")
        return topics[ref["topic"]]
    if kind == "mbpp":
        task = ref.get("task_id")
        if task in MBPP_TEST_RANGE:
            raise AblateError(f"{where}: ref.task_id {task} is in MBPP's test range 11-510")
        row = sources.mbpp().get(task)
        if row is None:
            raise AblateError(f"{where}: ref.task_id {show(task)} is not an MBPP task")
        return row["code"]
    if kind == "gsm8k":
        rows = sources.gsm8k()
        line, render = ref.get("line"), ref.get("render")
        if not isinstance(line, int) or not 1 <= line <= len(rows):
            raise AblateError(f"{where}: ref.line {show(line)} is not a line of GSM8K train.jsonl")
        renders = {
            "structured": gsm8k.as_structured,
            "prose": gsm8k.as_prose,
            "code": gsm8k.as_code,
        }
        if render not in renders:
            allowed = ", ".join(renders)
            raise AblateError(
                f"{where}: ref.render {show(render)} is not a render (allowed: {allowed})"
            )
        row = rows[line - 1]
        return renders[render](row["question"], row["answer"])
    if kind == "math500":
        row = sources.math500().get(ref.get("unique_id"))
        if row is None:
            raise AblateError(
                f"{where}: ref.unique_id {show(ref.get('unique_id'))} is not in MATH-500"
            )
        return f"Problem: {row['problem'].strip()}\nSolution: {row['solution'].strip()}\n"
    raise AblateError(
        f"{where}: ref.kind {show(kind)} is not a kind (allowed: {', '.join(_KINDS)})"
    )


def read_rows(path: str | None = None) -> list[dict]:
    path = path or DEFAULT_PATH
    if not os.path.isfile(path):
        raise AblateError(f"{path}: labelled set not found")
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except ValueError as e:
                    raise AblateError(f"{path}: line {n}: not JSON ({e})") from None
    return rows


def load_labelled(path: str | None = None, benchmarks: str | None = None) -> list[LabelledDoc]:
    """Every labelled document, its text rebuilt from its reference. ``benchmarks``: a
    directory laid out like ../shared/benchmarks (default: found as the eval tasks find it)."""
    path = path or DEFAULT_PATH
    sources = _Sources(benchmarks)
    docs = []
    seen = set()
    for n, row in enumerate(read_rows(path), 1):
        where = f"{path}: line {n}"
        for key in ("id", "tagger", "label", "split", "ref"):
            if key not in row:
                raise AblateError(f"{where}: missing field {key!r}")
        if row["id"] in seen:
            raise AblateError(f"{where}: id {show(row['id'])} appears twice")
        seen.add(row["id"])
        if row["tagger"] not in TAGGERS:
            raise AblateError(f"{where}: tagger {show(row['tagger'])} (allowed: code, math)")
        if row["split"] not in ("dev", "test"):
            raise AblateError(f"{where}: split {show(row['split'])} (allowed: dev, test)")
        text = rebuild(row["ref"], sources, where)
        docs.append(
            LabelledDoc(
                id=row["id"],
                tagger=row["tagger"],
                label=row["label"],
                split=row["split"],
                text=text,
                kind=_KINDS[row["ref"]["kind"]],
                ref=row["ref"],
            )
        )
    return docs


# ---------------------------------------------------------------------------------------------
# the selection rules of the automatic rows


def _every_kth(items: list, target: int = TARGET) -> list:
    """Every k-th item from the first, k = len(items) // target (at least 1)."""
    return items[:: max(1, len(items) // target)]


def _nonblank(text: str) -> int:
    return sum(1 for line in text.splitlines() if line.strip())


def stdlib_candidates() -> tuple[list[str], list[str]]:
    """(modules for code.exec, modules for code.nl), each sorted by path: every module that
    parses and keeps at least MIN_CODE_LINES non-blank lines once stripped; for code.nl also a
    module docstring and docstrings+comments making at least NL_SHARE of the non-blank lines.
    Test suites are left out as in stdlib_corpus."""
    from ablate.data.stdlib_corpus import stdlib_files, strip_docs_and_comments

    root = stdlib_root()
    stripped, documented = [], []
    for path in sorted(stdlib_files(root), key=lambda p: os.path.relpath(p, root)):
        module = os.path.relpath(path, root).replace(os.sep, "/")
        try:
            with open(path, encoding="utf-8") as f:
                source = f.read()
            tree = ast.parse(source)
        except (UnicodeDecodeError, SyntaxError, ValueError):
            continue
        code = strip_docs_and_comments(source, tree)
        if not code or _nonblank(code) < MIN_CODE_LINES:
            continue
        stripped.append(module)
        share = 1 - _nonblank(code) / _nonblank(source)
        if ast.get_docstring(tree) and share >= NL_SHARE:
            documented.append(module)
    return stripped, documented


def _row(doc_id: str, tagger: str, label: str, ref: dict, rule: str) -> dict:
    return {
        "id": doc_id,
        "tagger": tagger,
        "label": label,
        "split": split_of(doc_id),
        "ref": ref,
        "rule": rule,
    }


def selected_rows(benchmarks: str | None = None) -> list[dict]:
    """The automatic rows of the labelled set, by the rules PROVENANCE.md states."""
    from pydoc_data.topics import topics

    rows = []
    stripped, documented = stdlib_candidates()
    for module in _every_kth(stripped):
        name = module[:-3].replace("/", ".")
        rows.append(
            _row(
                f"stdlib-exec:{name}",
                "code",
                "code.exec",
                {"kind": "stdlib_stripped", "module": module},
                "stdlib module, docstrings and comments stripped: code only",
            )
        )
    for module in _every_kth(documented):
        name = module[:-3].replace("/", ".")
        rows.append(
            _row(
                f"stdlib-nl:{name}",
                "code",
                "code.nl",
                {"kind": "stdlib_module", "module": module},
                f"stdlib module as shipped, docstrings+comments >= {NL_SHARE:.0%} of its lines",
            )
        )
    for topic in _every_kth(sorted(topics)):
        rows.append(
            _row(
                f"pydoc:{topic}",
                "code",
                "code.text",
                {"kind": "pydoc_topic", "topic": topic},
                "language reference prose about code (pydoc_data.topics)",
            )
        )
    available = sorted(_Sources(benchmarks).mbpp())
    for task in _every_kth([t for t in available if t in MBPP_ALLOWED]):
        rows.append(
            _row(
                f"mbpp:{task}",
                "code",
                "code.exec",
                {"kind": "mbpp", "task_id": task},
                "MBPP reference solution: a standalone program",
            )
        )
    lines = range(1, len(_Sources(benchmarks).gsm8k()) + 1)
    for line in _every_kth(list(lines)):
        for render, label in GSM8K_RENDERS.items():
            rows.append(
                _row(
                    f"gsm8k-{render}:{line}",
                    "math",
                    label,
                    {"kind": "gsm8k", "line": line, "render": render},
                    f"GSM8K train solution rendered by ablate.data.gsm8k.as_{render}",
                )
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ablate.data.tagging.labelled",
        description="Check the labelled set, or rewrite its automatic rows by their rules.",
    )
    parser.add_argument("--path", default=None, help="labels.jsonl (default: tests/data/tagging)")
    parser.add_argument("--benchmarks", default=None, help="a directory like ../shared/benchmarks")
    parser.add_argument(
        "--write", action="store_true", help="rewrite the automatic rows, keeping hand labels"
    )
    args = parser.parse_args(argv)
    path = args.path or DEFAULT_PATH
    try:
        if args.write:
            hand = (
                [r for r in read_rows(path) if r["ref"]["kind"] == "math500"]
                if os.path.isfile(path)
                else []
            )
            rows = selected_rows(args.benchmarks) + hand
            with open(path, "w", encoding="utf-8") as f:
                for row in rows:
                    f.write(json.dumps(row, ensure_ascii=False, sort_keys=False) + "\n")
        docs = load_labelled(path, args.benchmarks)
    except AblateError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    counts: dict[tuple[str, str], int] = {}
    for d in docs:
        counts[(d.label, d.split)] = counts.get((d.label, d.split), 0) + 1
    for label in sorted({d.label for d in docs}):
        dev, test = counts.get((label, "dev"), 0), counts.get((label, "test"), 0)
        print(f"{label:18s} dev {dev:4d}  test {test:4d}")
    print(f"{len(docs)} documents")
    return 0


if __name__ == "__main__":
    sys.exit(main())
