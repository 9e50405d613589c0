"""The Python standard library's own source as a real code corpus, present on every machine.

* ``code.exec``: each module as a program with its docstrings and comments removed, code only.
  (Option ``main_only: true`` keeps just the modules with an ``if __name__ == "__main__":``
  entry point, i.e. the ones that are scripts.) Every document still parses.
* ``code.nl``: every docstring of at least ``min_words`` words (module, class or function), with
  the ``def``/``class`` line it documents: prose about code, doctests included.

Two more kinds of document, for corpora whose domains a tagger decides (``tagger: code``):

* ``modules``: every module as shipped, docstrings and comments kept (default tag ``code.nl``);
* ``topics``: the help topics of ``pydoc_data/topics.py`` (the language reference pages that
  ``help("FOR")`` prints), prose about code (default tag ``code.text``).

Option ``documents`` picks which (default ``[exec, nl]``: the two above). Test suites are left
out (``test/``, ``tests/``, ``idle_test/``): they are not standalone programs and would dominate
the corpus. Options: ``root`` (another stdlib directory), ``main_only``, ``min_words`` (default
8), ``documents``.
"""

from __future__ import annotations

import ast
import io
import os
import re
import sysconfig
import tokenize

from ablate.data.corpora import Source
from ablate.data.rawfiles import Materialized, write_jsonl
from ablate.errors import AblateError
from ablate.validate import check_keys

_SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "__pycache__", "dist-packages"}


def stdlib_files(root: str) -> list[str]:
    files = []
    for d, dirs, fs in os.walk(root):
        dirs[:] = sorted(x for x in dirs if x not in _SKIP_DIRS)
        files.extend(os.path.join(d, f) for f in sorted(fs) if f.endswith(".py"))
    return files


def _docstring_nodes(tree: ast.Module):
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if (
                body
                and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)
            ):
                yield node, body[0]


def strip_docs_and_comments(source: str, tree: ast.Module) -> str | None:
    """The module's code without docstrings or comments; None if the result would not parse."""
    lines = source.splitlines()
    drop: set[int] = set()  # 0-based line numbers to remove
    insert_pass: dict[int, str] = {}
    for node, doc in _docstring_nodes(tree):
        first, last = lines[doc.lineno - 1], lines[doc.end_lineno - 1]
        # Only a docstring alone on its lines is removed; `def f(): "doc"; ...` stays as it is.
        rest = last[doc.end_col_offset :].strip()
        if first[: doc.col_offset].strip() == "" and (rest in ("", ";") or rest.startswith("#")):
            drop.update(range(doc.lineno - 1, doc.end_lineno))
            if len(node.body) == 1 and not isinstance(node, ast.Module):
                insert_pass[doc.lineno - 1] = " " * doc.col_offset + "pass"
    comments: dict[int, int] = {}  # line -> column where its comment starts
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == tokenize.COMMENT:
                comments[tok.start[0] - 1] = tok.start[1]
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return None
    out = []
    for i, line in enumerate(lines):
        if i in insert_pass:
            out.append(insert_pass[i])
            continue
        if i in drop:
            continue
        if i in comments:
            line = line[: comments[i]].rstrip()
            if not line:
                continue
        out.append(line)
    code = re.sub(r"\n{3,}", "\n\n", "\n".join(out)).strip("\n") + "\n"
    try:
        ast.parse(code)
    except SyntaxError:
        return None
    return code


def docstring_documents(source: str, tree: ast.Module, module: str, min_words: int) -> list[str]:
    lines = source.splitlines()
    docs = []
    for node, doc in _docstring_nodes(tree):
        text = ast.get_docstring(node, clean=True) or ""
        if len(text.split()) < min_words:
            continue
        if isinstance(node, ast.Module):
            docs.append(f'# module {module}\n"""{text}"""\n')
        else:
            header = "\n".join(lines[node.lineno - 1 : doc.lineno - 1]).rstrip()
            docs.append(f'{header}\n    """{_indent(text)}"""\n')
    return docs


def _indent(text: str) -> str:
    return text.replace("\n", "\n    ")


DOCUMENTS = ("exec", "nl", "modules", "topics")


def topic_items() -> list[tuple[str, str]]:
    """pydoc's help topics as (key, text), in sorted key order: prose about the language, with
    examples."""
    from pydoc_data.topics import topics

    return [(key, topics[key].strip() + "\n") for key in sorted(topics) if topics[key].strip()]


def topic_documents() -> list[str]:
    return [text for _, text in topic_items()]


def materialize_stdlib(source: Source, raw_dir: str) -> Materialized:
    opts = check_keys(
        source.options, ("root", "main_only", "min_words", "documents"), f"{source.where}.options"
    )
    root = opts.get("root") or sysconfig.get_paths()["stdlib"]
    if not os.path.isdir(root):
        raise AblateError(f"{source.where}.options.root: {root!r} is not a directory")
    min_words = int(opts.get("min_words", 8))
    kinds = opts.get("documents", ["exec", "nl"])
    if not isinstance(kinds, list) or not kinds or any(k not in DOCUMENTS for k in kinds):
        raise AblateError(
            f"{source.where}.options.documents: {kinds!r} is not a list of document kinds "
            f"(allowed: {', '.join(DOCUMENTS)})"
        )
    rows = []
    for path in stdlib_files(root):
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
            tree = ast.parse(text)
        except (UnicodeDecodeError, SyntaxError, ValueError):
            continue  # a handful of deliberately broken files exist (e.g. lib2to3 fixtures)
        module = os.path.relpath(path, root)[:-3].replace(os.sep, ".")
        if "modules" in kinds:
            rows.append({"text": text, "domain": "code.nl", "module": module, "kind": "python"})
        if "exec" in kinds and (
            not opts.get("main_only")
            or '__name__ == "__main__"' in text
            or "__name__ == '__main__'" in text
        ):
            code = strip_docs_and_comments(text, tree)
            if code and code.strip():
                rows.append(
                    {"text": code, "domain": "code.exec", "module": module, "kind": "python"}
                )
        if "nl" in kinds:
            rows.extend(
                {"text": d, "domain": "code.nl"}
                for d in docstring_documents(text, tree, module, min_words)
            )
    if "topics" in kinds:
        rows.extend({"text": t, "domain": "code.text", "kind": "text"} for t in topic_documents())
    out = os.path.join(raw_dir, f"{source.name}.jsonl")
    write_jsonl(out, rows)
    return Materialized([out])
