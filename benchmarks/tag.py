"""Throughput of tagging + decontamination against the straightforward per-document loop.

Run (about 200 MB of JSONL, written to a temporary directory and removed at the end):

    python benchmarks/tag.py --mb 200
    python benchmarks/tag.py --quick        # 8 MB, a smoke test (under a minute)

Corpus: two JSONL files of roughly equal bytes, repeated from real text until they reach the
size (documents repeat; the work per byte is the same):

* ``code.jsonl``, tagged by the code tagger: the standard library's modules as shipped and
  stripped of docstrings and comments (``stdlib_corpus.strip_docs_and_comments``), pydoc's help
  topics (``stdlib_corpus.topic_documents``) and MBPP's programs;
* ``math.jsonl``, tagged by the math tagger: GSM8K train in its three renders
  (``gsm8k.as_structured``, ``as_prose``, ``as_code``) and MATH-500's problems with their
  solutions (../shared/benchmarks).

Both paths cut each file into the same jobs (``ingest.split_file``: 16 MiB line-aligned slices)
and run them in ``ablate.data.workers.worker_pool`` processes (1 and 2), results gathered in job
order. Per job:

* ablate: the rows read by ingest's reader, ``tagger.segments`` + ``tagger.decide`` per row (what
  ``run_tag_job`` does, less writing the shard), then the segments checked against the GSM8K,
  MATH-500, HumanEval and MBPP n-grams by ``Decontaminator.hits_batch`` in batches of 512 (what
  prepare's ingest workers do);
* baseline: the straightforward per-document loop, written here: ``json.loads`` per line; code
  by ``ast.parse``, comments counted with the stdlib ``tokenize`` module and string statements
  found by ``ast.walk`` (a text that does not parse: a per-line loop over its code blocks);
  math by per-line Python loops with per-line regex calls for the math tagger's features and
  formula; decontamination with Python dicts of word tuples (13-grams, and whole short items as
  the product matches them) over ``normalize_words`` of each document.

Before timing, a sample of documents is decided by both and the agreement printed (domains and
contamination). It prints seconds, documents/s and MB/s per (path, workers), ablate's speedup at
equal workers and each path's 2-worker/1-worker scaling. Both paths run in the same process
minute after minute on the same machine: quote the ratios; the raw rates carry machine noise.
"""

from __future__ import annotations

import argparse
import hashlib
import ast
import io
import json
import os
import pickle
import random
import re
import shutil
import sys
import sysconfig
import tempfile
import textwrap
import time
import tokenize
import warnings

# Heavy or ablate imports live inside functions: the workers are spawned and re-import this
# script as their main module.

SHARED = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "benchmarks"
)
EVAL_SETS = ["gsm8k", "math500", "humaneval", "mbpp"]
DECONTAM_BATCH = 512  # segments per hits_batch call, as ingest's DECONTAM_BATCH_DOCS


# --- corpus ---------------------------------------------------------------------------------


def code_pool(every: int = 1) -> list[str]:
    """Standard-library modules (as shipped and stripped; every ``every``-th module: --quick
    skips most, stripping them is most of the corpus's set-up), pydoc topics, MBPP programs."""
    from ablate.data.stdlib_corpus import stdlib_files, strip_docs_and_comments, topic_documents

    docs = []
    for path in stdlib_files(sysconfig.get_paths()["stdlib"])[::every]:
        try:
            with open(path, encoding="utf-8") as f:
                source = f.read()
        except (UnicodeDecodeError, OSError):
            continue
        docs.append(source)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                tree = ast.parse(source)
        except (SyntaxError, ValueError):
            continue
        stripped = strip_docs_and_comments(source, tree)
        if stripped:
            docs.append(stripped)
    docs += topic_documents()
    with open(os.path.join(SHARED, "mbpp", "mbpp.jsonl"), encoding="utf-8") as f:
        docs += [json.loads(line)["code"] for line in f if line.strip()]
    return [d for d in docs if d.strip()]


def math_pool() -> list[str]:
    """GSM8K train in its three renders, MATH-500 problems with their solutions."""
    from ablate.data.gsm8k import as_code, as_prose, as_structured

    docs = []
    with open(os.path.join(SHARED, "gsm8k", "train.jsonl"), encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            q, a = row["question"], row["answer"]
            docs += [as_structured(q, a), as_prose(q, a), as_code(q, a)]
    with open(os.path.join(SHARED, "math500", "test.jsonl"), encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            docs.append(row["problem"] + "\n\n" + row["solution"])
    return docs


def write_pool(path: str, pool: list[str], target: int, seed: int) -> tuple[int, int]:
    """Passes over ``pool`` (each shuffled anew) until ``target`` bytes: (bytes, documents)."""
    rng = random.Random(seed)
    written = docs = 0
    with open(path, "w", encoding="utf-8") as f:
        while written < target:
            order = list(range(len(pool)))
            rng.shuffle(order)
            for i in order:
                line = json.dumps({"text": pool[i]}, ensure_ascii=False) + "\n"
                f.write(line)
                written += len(line.encode("utf-8"))
                docs += 1
                if written >= target:
                    break
    return written, docs


# --- ablate's path --------------------------------------------------------------------------

_state: dict = {}  # per worker process: the decontaminator, loaded once


def _decontaminator(path: str):
    if path not in _state:
        from ablate.data.tagging.decontam import Decontaminator

        _state[path] = Decontaminator.load(path)
    return _state[path]


def fast_job(path: str, start: int, end: int, tagger_name: str, table: str) -> dict:
    """One job as the product runs it: tag every row, then check the segments in batches."""
    from ablate.data.ingest import IngestJob, _rows
    from ablate.data.tagging.base import Document
    from ablate.data.tagging.run import cached_tagger

    cpu = time.process_time()
    tagger = cached_tagger(tagger_name, "{}")
    thresholds = tagger.thresholds
    decontam = _decontaminator(table)
    read = IngestJob(0, tagger_name, path, "jsonl", start, end, None, "text", "domain", 0.0)
    hasher = hashlib.sha256()  # the reader hashes what it reads, as in the product
    out = {"documents": 0, "bytes": 0, "domains": {}, "contaminated": 0}
    pending: list[str] = []

    def check(batch: list[str]) -> None:
        out["contaminated"] += sum(1 for hit in decontam.hits_batch(batch) if hit)

    for _, row in _rows(read, hasher):
        text = row["text"]
        out["documents"] += 1
        out["bytes"] += len(text.encode("utf-8", "surrogatepass"))
        for seg in tagger.segments(Document(text, "auto")):
            domain = tagger.decide(seg.scores, thresholds)
            out["domains"][domain] = out["domains"].get(domain, 0) + 1
            pending.append(seg.text)
            if len(pending) >= DECONTAM_BATCH:
                check(pending)
                pending = []
    if pending:
        check(pending)
    out["cpu"] = time.process_time() - cpu
    return out


# --- baseline: code -------------------------------------------------------------------------


def _nonspace(text: str) -> int:
    return len("".join(text.split()))


def _bare_words(tree: ast.Module) -> bool:
    """The code tagger's own rule (a decision, not a cost: the baseline must decide alike)."""
    from ablate.data.tagging.code import _bare_words as rule

    return rule(tree)


def _code_python(text: str, tree: ast.Module) -> str:
    """Comments by ``tokenize``, string statements by ``ast.walk``; the code tagger's rule."""
    prose = 0
    try:
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            if tok.type == tokenize.COMMENT:
                prose += _nonspace(tok.string)
    except (tokenize.TokenError, IndentationError, SyntaxError):
        pass
    lines = text.split("\n")
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Expr)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ):
            v = node.value
            if v.lineno == v.end_lineno:
                seg = lines[v.lineno - 1].encode()[v.col_offset : v.end_col_offset].decode()
            else:
                first = lines[v.lineno - 1].encode()[v.col_offset :].decode()
                last = lines[v.end_lineno - 1].encode()[: v.end_col_offset].decode()
                seg = "\n".join([first, *lines[v.lineno : v.end_lineno - 1], last])
            prose += _nonspace(seg)
    total = _nonspace(text)
    prose_ratio = round(prose / total, 4) if total else 0.0
    if not tree.body:
        code_ratio = round((total - prose) / total, 4) if total else 0.0
        return "code.text" if code_ratio < 0.6 else "code"
    return "code.nl" if prose_ratio >= 0.05 else "code.exec"


_BASE_CODE_LINE = re.compile(
    r"[ \t]*(?:#include\b|#define\b|//|/\*|\}|(?:async[ \t]+)?def[ \t]+\w+[ \t]*\(.*\).*:"
    r"|class[ \t]+\w+.*:).*$|.*[;{}][ \t]*$"
)


def _code_prose(text: str) -> str:
    """A text that is not Python: its code is fenced blocks, indented literal blocks after a
    line ending in ':', doctest blocks and lines only code writes, found line by line."""
    lines = text.split("\n")
    code = [False] * len(lines)
    i = 0
    while i < len(lines):
        stripped = lines[i].strip()
        if stripped.startswith(("```", "~~~")):  # a fence, to its closing line or the end
            mark = stripped[:3]
            j = i + 1
            while j < len(lines) and not lines[j].strip().startswith(mark):
                j += 1
            for k in range(i, min(j + 1, len(lines))):
                code[k] = True
            i = j + 1
            continue
        if stripped.startswith(">>>"):  # a doctest block: to the next blank line
            while i < len(lines) and lines[i].strip():
                code[i] = True
                i += 1
            continue
        if stripped.endswith(":") and i + 1 < len(lines) and not lines[i + 1].strip():
            lead = len(lines[i]) - len(lines[i].lstrip())
            j = i + 1
            while j < len(lines) and not lines[j].strip():
                j += 1
            if j < len(lines) and len(lines[j]) - len(lines[j].lstrip()) >= lead + 2:
                while j < len(lines) and (
                    not lines[j].strip() or len(lines[j]) - len(lines[j].lstrip()) > lead
                ):
                    code[j] = True
                    j += 1
                i = j
                continue
        if _BASE_CODE_LINE.match(lines[i]):
            code[i] = True
        i += 1
    total = _nonspace(text)
    chars = sum(_nonspace(line) for line, c in zip(lines, code) if c)
    code_ratio = round(chars / total, 4) if total else 0.0
    return "code.text" if code_ratio < 0.6 else "code"


def base_code(text: str) -> str:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tree = ast.parse(text)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        tree = None
    if tree is not None and not _bare_words(tree):
        return _code_python(text, tree)
    return _code_prose(text)


# --- baseline: math -------------------------------------------------------------------------

_WEIGHTS = {
    "equation_lines": 0.55,
    "numbered_steps": 0.55,
    "calc_annotations": 0.6,
    "align_envs": 0.6,
    "line_structure": 0.35,
    "equation_prose_ratio": 0.1,
    "final_answer": 0.1,
}
_B_ASY = re.compile(r"\[asy\].*?\[/asy\]", re.S)
_B_DISPLAY = re.compile(
    r"\\begin\{(align|eqnarray|gather|multline|equation|flalign|alignat|split|gathered|aligned"
    r"|array|cases)(\*?)\}.*?\\end\{\1\2\}|\\\[.*?\\\]|\$\$.*?\$\$",
    re.S,
)
_B_MULTIROW = re.compile(r"\\begin\{(?:align|eqnarray|gather|multline|flalign|alignat)")
_B_CALC = re.compile(r"<<[^<>]*>>")
_B_CALC_EQ = re.compile(r"<<[^<>]*=[^<>]*>>")
_B_INLINE = re.compile(r"(?<![\\$])\$(?!\$)(?:[^$\\]|\\.)*\$|\\\(.*?\\\)")
_B_RELATION = re.compile(
    r"=(?<![<>=!]=)(?![=>])|\\(?:leq?|geq?|neq?|equiv|approx|cong|lt|gt)(?![A-Za-z])|\x01"
)
_B_TWO_SENTENCES = re.compile(r"[.!?]\$?[ \t]+[^\s*]")
_B_SENTENCE_END = re.compile(r"(?<=[.!?])[ \t]")
_B_STEP = re.compile(
    r"[ \t]*(?:(?:Step|STEP|Part)[ \t]*\d+|\d{1,2}[.)][ \t]|\([a-hA-H1-9]\)[ \t]|[a-h]\)[ \t]"
    r"|\((?:i{1,3}|iv|vi{0,3}|ix|x)\)[ \t]|[-*\u2022][ \t]"
    r"|(?:First|Second|Third|Fourth|Fifth|Next|Then|Finally|Lastly)\b|[QA]\d*[:.][ \t])"
)
_B_SOCRATIC = re.compile(r"\?[ \t]*\*\*")
_B_FINAL = re.compile(r"####[ \t]*\S|(?:Final )?[Aa]nswer[ \t]*:")
_B_ANSWER_IS = re.compile(r"[Tt]he (?:final )?answer is\b")
_B_UNIT = re.compile(r"(?:[.!?:;$})\]\d\x01][ \t]{0,2}|\\\\[ \t]?)$")
_B_PY_LINE = re.compile(
    r"[ \t]*(?:#(?!###)|(?:def|class|for|while|if|elif|else|try|except|finally|with|return"
    r"|import|from|print|assert|raise|yield|async|await)\b"
    r"|[A-Za-z_][\w.]*(?:\[[^\]]*\])?(?:[ \t]*,[ \t]*[A-Za-z_][\w.]*)*[ \t]*(?:[-+*/%]|//|\*\*)?="
    r"(?!=)|[A-Za-z_][\w.]*\(.*\)[ \t]*$)|[ \t]+\S"
)
_B_COMMENT = re.compile(r"(?<![\w'\"])#.*")


def _mnonspace(text: str) -> int:
    return len(text) - text.count(" ") - text.count("\n") - text.count("\t")


def _parses_with_statements(source: str) -> bool:
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False
    return any(
        isinstance(s, ast.stmt)
        and not (isinstance(s, ast.Expr) and isinstance(s.value, (ast.Name, ast.Constant)))
        for s in ast.walk(tree)
    )


def _math_code_lines(lines: list[str]) -> tuple[list[bool], int]:
    """Which lines are code (fenced blocks; runs of Python-looking lines that parse with a
    statement over two non-blank lines at least) and the characters of their ``#`` comments."""
    code = [False] * len(lines)
    comments = 0
    i = 0
    while i < len(lines):
        if lines[i].lstrip().startswith("```"):
            j = i + 1
            while j < len(lines) and lines[j].strip() != "```":
                j += 1
            if j < len(lines):
                for k in range(i, j + 1):
                    code[k] = True
                    comments += sum(_mnonspace(c) for c in _B_COMMENT.findall(lines[k]))
                i = j + 1
                continue
        if _B_PY_LINE.match(lines[i]):
            j = i + 1
            while j < len(lines):
                if _B_PY_LINE.match(lines[j]):
                    j += 1
                elif not lines[j].strip():
                    k = j
                    while k < len(lines) and not lines[k].strip():
                        k += 1
                    if k < len(lines) and _B_PY_LINE.match(lines[k]):
                        j = k
                    else:
                        break
                else:
                    break
            run = lines[i:j]
            if sum(1 for line in run if line.strip()) >= 2 and _parses_with_statements(
                textwrap.dedent("\n".join(run))
            ):
                for k in range(i, j):
                    code[k] = True
                    comments += sum(_mnonspace(c) for c in _B_COMMENT.findall(lines[k]))
            i = j
            continue
        i += 1
    return code, comments


def _structure(prose: str) -> float:
    nonspace = _mnonspace(prose)
    math_chars = 0
    calc_lines = 0
    text_lines = []
    for line in prose.split("\n"):
        for c in _B_CALC.findall(line):
            math_chars += _mnonspace(c)
        if _B_CALC_EQ.search(line):
            calc_lines += 1
        text_lines.append(_B_CALC.sub("", line))
    text = "\n".join(text_lines)
    rows = 0
    pieces, pos = [], 0
    for m in _B_DISPLAY.finditer(text):  # display math spans lines: one marker line per row
        block = m.group(0)
        math_chars += _mnonspace(block)
        breaks = block.count("\\\\")
        if breaks or _B_MULTIROW.match(block):
            rows += breaks + 1
        pieces += [text[pos : m.start()], "\n" + "\x01\n" * (breaks + 1)]
        pos = m.end()
    pieces.append(text[pos:])
    lines = "".join(pieces).split("\n")
    nonblank = eq_lines = eq_sentences = units = steps = 0
    final = False
    latex = "\\" in text  # "$" is math only in text with a backslash, else a currency sign
    for line in lines:
        plain = line
        if latex:
            for m in _B_INLINE.findall(line):
                math_chars += _mnonspace(m)
            plain = _B_INLINE.sub("", line)
        math_chars += sum(1 for ch in plain if ch in "0123456789+-*/=×÷%^")
        if not line.strip():
            continue
        nonblank += 1
        if _B_RELATION.search(line):
            if len(line) <= 160 and not _B_TWO_SENTENCES.search(line):
                eq_lines += 1
            eq_sentences += sum(1 for s in _B_SENTENCE_END.split(line) if _B_RELATION.search(s))
        if len(line) <= 160 and _B_UNIT.search(line):
            units += 1
        if _B_STEP.match(line):
            steps += 1
        if _B_SOCRATIC.search(line):
            steps += 1
        if (
            "\\boxed{" in line
            or "\\fbox{" in line
            or _B_FINAL.match(line)
            or _B_ANSWER_IS.search(line)
        ):
            final = True
    if nonblank == 0:
        return 0.0
    n = max(nonblank, 3)
    own = min(1.0, eq_lines / eq_sentences) if eq_sentences else 0.0
    features = {
        "equation_lines": eq_lines / n * own,
        "numbered_steps": min(1.0, steps / n),
        "calc_annotations": min(1.0, calc_lines / n),
        "align_envs": min(1.0, rows / n),
        "equation_prose_ratio": min(1.0, math_chars / nonspace) if nonspace else 0.0,
        "final_answer": 1.0 if final else 0.0,
        "line_structure": units / n,
    }
    keep = 1.0
    for name, weight in _WEIGHTS.items():
        keep *= 1.0 - weight * features[name]
    return round(1.0 - keep, 4)


def base_math(text: str) -> str:
    text = _B_ASY.sub("", text)
    lines = text.split("\n")
    code, comments = _math_code_lines(lines)
    nonspace = _mnonspace(text)
    code_chars = sum(_mnonspace(line) for line, c in zip(lines, code) if c)
    code_ratio = round(code_chars / nonspace, 4) if nonspace else 0.0
    reasoning = round((nonspace - code_chars + comments) / nonspace, 4) if nonspace else 0.0
    if code_ratio >= 0.04 and reasoning >= 0.05:
        return "math.code"
    prose = "\n".join(line for line, c in zip(lines, code) if not c)
    return "math.structured" if _structure(prose) >= 0.45 else "math.text"


# --- baseline: decontamination --------------------------------------------------------------


def base_eval_grams() -> dict[int, dict[tuple, frozenset]]:
    """k -> {word tuple: eval set names}: every item's 13-grams (items of 8-12 words whole),
    each field of an item alone too, grams of nothing but numbers and single letters left out
    (the product's rule, from the same items)."""
    from ablate.data.tagging.decontam import FIELD_SEP, load_eval_sets, normalize_words

    grams: dict[int, dict[tuple, set]] = {}
    for s in load_eval_sets(EVAL_SETS, ".", "--eval-sets"):
        for item in s.items:
            texts = [item] + (item.split(FIELD_SEP) if FIELD_SEP in item else [])
            for t in texts:
                words = normalize_words(t)
                k = min(len(words), 13)
                if k < 8:
                    continue
                for i in range(len(words) - k + 1):
                    gram = tuple(words[i : i + k])
                    if all(w.isdigit() or len(w) == 1 for w in gram):
                        continue
                    grams.setdefault(k, {}).setdefault(gram, set()).add(s.name)
    return {k: {g: frozenset(n) for g, n in d.items()} for k, d in grams.items()}


def _base_grams(path: str) -> dict:
    if path not in _state:
        with open(path, "rb") as f:
            _state[path] = pickle.load(f)
    return _state[path]


def base_hits(text: str, grams: dict) -> frozenset:
    from ablate.data.tagging.decontam import normalize_words

    words = normalize_words(text)
    found: set = set()
    for k, table in grams.items():
        for gram in zip(*(words[i:] for i in range(k))):
            names = table.get(gram)
            if names:
                found |= names
    return frozenset(found)


def base_job(path: str, start: int, end: int, tagger_name: str, table: str) -> dict:
    """One job the straightforward way: a line at a time, each document decided and checked."""
    cpu = time.process_time()
    grams = _base_grams(table)
    decide = base_code if tagger_name == "code" else base_math
    out = {"documents": 0, "bytes": 0, "domains": {}, "contaminated": 0}
    with open(path, "rb") as f:
        f.seek(start)
        # split on b"\n" only: str.splitlines would also cut at U+2028 and friends, which
        # JSON written with ensure_ascii=False carries raw inside strings
        for line in f.read(end - start).split(b"\n"):
            if not line.strip():
                continue
            text = json.loads(line)["text"]
            out["documents"] += 1
            out["bytes"] += len(text.encode("utf-8", "surrogatepass"))
            domain = decide(text)
            out["domains"][domain] = out["domains"].get(domain, 0) + 1
            out["contaminated"] += bool(base_hits(text, grams))
    out["cpu"] = time.process_time() - cpu
    return out


# --- the benchmark --------------------------------------------------------------------------


def run_path(fn, jobs: list[tuple], workers: int) -> tuple[float, list[dict]]:
    """Seconds for every job in ``workers`` fresh worker processes, results in job order."""
    from ablate.data.workers import worker_pool

    t0 = time.perf_counter()
    with worker_pool(workers) as pool:
        futures = [pool.submit(fn, *job) for job in jobs]
        results = [f.result() for f in futures]
    return time.perf_counter() - t0, results


def agreement(code: list[str], math: list[str], sample: int, grams: dict, table: str, seed: int):
    """Domains and contamination of a sample decided by both paths: print the agreement."""
    from ablate.data.tagging.base import Document
    from ablate.data.tagging.decontam import Decontaminator
    from ablate.data.tagging.registry import build_tagger

    rng = random.Random(seed)
    decontam = Decontaminator.load(table)
    print(f"agreement on {sample:,} sampled documents (half code, half math):")
    for name, pool, base in (("code", code, base_code), ("math", math, base_math)):
        tagger = build_tagger(name, {}, "tagger")
        docs = rng.sample(pool, min(sample // 2, len(pool)))
        fast = [
            tagger.decide(tagger.segments(Document(d))[0].scores, tagger.thresholds) for d in docs
        ]
        slow = [base(d) for d in docs]
        hit_fast = [bool(h) for h in decontam.hits_batch(docs)]
        hit_slow = [bool(base_hits(d, grams)) for d in docs]
        same = sum(a == b for a, b in zip(fast, slow))
        same_hit = sum(a == b for a, b in zip(hit_fast, hit_slow))
        print(
            f"  {name}: domains {same}/{len(docs)} = {same / len(docs):.1%}, "
            f"contamination {same_hit}/{len(docs)} = {same_hit / len(docs):.1%} "
            f"({sum(hit_fast)} contaminated by ablate)"
        )
        pairs: dict = {}
        for d, a, b in zip(docs, fast, slow):
            if a != b:
                pairs.setdefault((a, b), []).append(d)
        for (a, b), ds in sorted(pairs.items(), key=lambda kv: -len(kv[1])):
            first = ds[0].strip().split("\n", 1)[0][:70]
            print(f"    ablate {a} / baseline {b}: {len(ds)} (e.g. {first!r})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mb", type=int, default=200, help="corpus size in MB (default 200)")
    ap.add_argument("--quick", action="store_true", help="an 8 MB corpus: a smoke test")
    ap.add_argument("--workers", default="1,2", help="worker counts, comma-separated (default 1,2)")
    ap.add_argument("--sample", type=int, default=2000, help="documents in the agreement check")
    ap.add_argument("--paths", default="baseline,ablate", help="which paths to time (default both)")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    mb = 8 if args.quick else args.mb
    workers_list = [int(w) for w in args.workers.split(",")]

    from ablate.data.ingest import split_file
    from ablate.data.tagging.decontam import Decontaminator, load_eval_sets

    work = tempfile.mkdtemp(prefix="ablate-bench-tag-")
    try:
        t0 = time.perf_counter()
        code, math = code_pool(4 if args.quick else 1), math_pool()
        files = []
        for name, pool in (("code", code), ("math", math)):
            path = os.path.join(work, f"{name}.jsonl")
            size, docs = write_pool(path, pool, mb * 500_000, args.seed)
            files.append((name, path))
            print(f"{name}.jsonl: {size / 1e6:.0f} MB, {docs:,} documents", file=sys.stderr)
        table = os.path.join(work, "eval-ngrams.npz")
        Decontaminator(load_eval_sets(EVAL_SETS, ".", "--eval-sets"), n=13).save(table)
        grams = base_eval_grams()
        base_table = os.path.join(work, "eval-grams.pickle")
        with open(base_table, "wb") as f:
            pickle.dump(grams, f)
        print(f"corpus and eval tables in {time.perf_counter() - t0:.0f}s", file=sys.stderr)

        agreement(code, math, 500 if args.quick else args.sample, grams, table, args.seed)

        jobs = [
            (path, start, end, name, None)
            for name, path in files
            for start, end in split_file(path, "jsonl")
        ]
        if len(jobs) < 4 * max(workers_list):
            # two files of uneven cost per byte, a job or two each: the workers wait on the
            # longest job, so the scaling column says little (the ratios still hold)
            print(
                f"note: {len(jobs)} jobs for up to {max(workers_list)} workers: the scaling "
                "figures need the full size (--mb 200)",
                file=sys.stderr,
            )
        paths = {"baseline": (base_job, base_table), "ablate": (fast_job, table)}
        paths = {k: v for k, v in paths.items() if k in args.paths.split(",")}
        rows = {}  # (path, workers) -> (seconds, documents, bytes, CPU seconds in the jobs)
        for workers in workers_list:
            for label, (fn, tab) in paths.items():
                seconds, results = run_path(fn, [j[:4] + (tab,) for j in jobs], workers)
                docs = sum(r["documents"] for r in results)
                nbytes = sum(r["bytes"] for r in results)
                domains: dict = {}
                for r in results:
                    for d, n in r["domains"].items():
                        domains[d] = domains.get(d, 0) + n
                bad = sum(r["contaminated"] for r in results)
                cpu = [r["cpu"] for r in results]
                rows[label, workers] = (seconds, docs, nbytes, sum(cpu))
                print(
                    f"  {label} {workers}w: {seconds:.1f}s, {docs:,} documents, "
                    f"{bad:,} contaminated, {dict(sorted(domains.items()))}; job CPU "
                    f"{sum(cpu):.1f}s (longest job {max(cpu):.1f}s); load average after "
                    f"{os.getloadavg()[0]:.1f}",
                    file=sys.stderr,
                )
        print_table(rows, workers_list, len(jobs), mb)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def print_table(rows: dict, workers_list: list[int], jobs: int, mb: int) -> None:
    print(
        f"\ntagging + decontamination, {mb} MB JSONL in {jobs} jobs, {os.cpu_count()} cores "
        "(both paths measured in this run)"
    )
    head = (
        f"{'path':<9} {'workers':>7} {'seconds':>8} {'docs/s':>9} {'MB/s':>7} "
        f"{'vs baseline':>12} {'scaling':>8} {'job CPU s':>10} {'cores busy':>10}"
    )
    print(head)
    print("-" * len(head))
    for (label, w), (seconds, docs, nbytes, cpu) in rows.items():
        ratio = scaling = ""
        if label == "ablate" and ("baseline", w) in rows:
            ratio = f"{rows['baseline', w][0] / seconds:.2f}x"
        if w != workers_list[0] and (label, workers_list[0]) in rows:
            scaling = f"{rows[label, workers_list[0]][0] / seconds:.2f}x"
        print(
            f"{label:<9} {w:>7} {seconds:>8.1f} {docs / seconds:>9,.0f} "
            f"{nbytes / 1e6 / seconds:>7.2f} {ratio:>12} {scaling:>8} {cpu:>10.1f} "
            f"{cpu / seconds:>10.2f}"
        )
    print(
        "job CPU s: CPU time spent inside the jobs (summed over workers); cores busy: that over "
        "the wall time (ideal: the worker count)"
    )
    print("\ntargets (issue): >=2x the baseline at equal workers; near-linear 1->2 worker scaling")


if __name__ == "__main__":
    main()
