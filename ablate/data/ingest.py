"""Reading and tokenizing corpus files, one *task* (an ``IngestJob``) at a time, in workers.

A task is a slice of one input file: a line-aligned byte range of a JSONL file, one row group of
a Parquet file, or a whole gzipped JSONL file. Task boundaries depend only on the files, never on
the number of workers, and the merge step concatenates task outputs in task order, so the
written datasets are byte-identical whatever the parallelism.

Each task writes, per (domain, split), the concatenated token ids of its documents and their
lengths to shard files; the parent process appends those to megatron-core's builder. Passing
shards through files rather than pipes keeps the parent's memory flat on large corpora.

Damaged input is one line naming the file (and line or row): an unreadable or empty file, a
JSON array or pretty-printed object where JSON Lines are expected, invalid UTF-8, invalid JSON.
Reading errors are ``DataError``s; writing errors (a full disk) stay ``OSError``s so that the
parent names its output directory.

This module must stay free of torch/megatron imports: it is what the spawned workers import.
"""

from __future__ import annotations

import gzip
import hashlib
import os
from dataclasses import dataclass, field

import numpy as np
import orjson

from ablate.data.taxonomy import Taxonomy
from ablate.data.tokenizer import Tokenizer, load_tokenizer
from ablate.errors import DataError, show

JSONL_CHUNK_BYTES = 16 << 20  # one task per 16 MiB: enough tasks to balance 2..64 workers
ENCODE_BATCH_DOCS = 2048  # documents per tokenizer call: amortizes per-call overhead
SPLITS = ("train", "eval")


@dataclass(frozen=True)
class IngestJob:
    """One task: a slice of one input file (named apart from ``ablate.evals.tasks.base.Task``)."""

    index: int
    source: str  # source name
    path: str
    fmt: str  # jsonl | jsonl.gz | parquet
    start: int  # byte offset (jsonl) or row group (parquet)
    end: int
    domain: str | None  # the source's tag; None: each row carries its own
    text_field: str
    domain_field: str
    eval_fraction: float
    # a tagged source: (tagger, options JSON, thresholds JSON); the domain is decided again from
    # each row's stored scores, so new thresholds need no new tagging
    decide: tuple | None = None
    decontam: str | None = None  # the eval n-grams (``Decontaminator.save``): check each row
    decontam_action: str = "drop"  # drop | keep (count only)


@dataclass
class TaskResult:
    index: int
    rows: int = 0
    skipped_empty: int = 0
    contaminated: int = 0  # documents sharing an n-gram with an eval set
    dropped: int = 0  # of those, the ones left out (action drop)
    by_eval_set: dict = field(default_factory=dict)  # eval set -> documents it caught
    # (domain, split) -> [documents, tokens, utf-8 bytes]
    counts: dict = field(default_factory=dict)
    content_hash: str = ""  # of the raw bytes this task read: the input's fingerprint


def file_format(path: str) -> str | None:
    for suffix, fmt in (
        (".jsonl.gz", "jsonl.gz"),
        (".json.gz", "jsonl.gz"),
        (".jsonl", "jsonl"),
        (".json", "jsonl"),
        (".parquet", "parquet"),
    ):
        if path.endswith(suffix):
            return fmt
    return None


def split_file(path: str, fmt: str) -> list[tuple[int, int]]:
    """The (start, end) ranges the file is cut into; raises on empty or unreadable files."""
    if fmt == "parquet":
        import pyarrow.parquet as pq

        _check_readable(path)
        try:
            groups = pq.ParquetFile(path).num_row_groups
        except Exception as exc:
            raise DataError(f"{path}: not a readable Parquet file ({_first_line(exc)})") from None
        if groups == 0:
            raise DataError(f"{path}: empty file (no rows)")
        return [(g, g + 1) for g in range(groups)]
    size = _check_readable(path)
    if size == 0:
        raise DataError(f"{path}: empty file (no rows)")
    _check_json_lines(path, fmt)
    if fmt == "jsonl.gz":
        return [(0, size)]
    bounds = [0]
    with open(path, "rb") as f:
        while bounds[-1] + JSONL_CHUNK_BYTES < size:
            f.seek(bounds[-1] + JSONL_CHUNK_BYTES)
            f.readline()  # move to the end of the line the cut fell in
            if f.tell() >= size:
                break
            bounds.append(f.tell())
    bounds.append(size)
    return list(zip(bounds[:-1], bounds[1:]))


def read_error(path: str, exc: OSError) -> DataError:
    """One line for an input file that cannot be read."""
    if os.path.islink(path) and not os.path.exists(path):
        return DataError(
            f"{path}: broken symbolic link (its target {show(os.readlink(path), 160)} "
            "cannot be reached); fix or remove it"
        )
    reason = (exc.strerror or type(exc).__name__).lower()
    return DataError(f"{path}: cannot read ({reason})")


def _check_readable(path: str) -> int:
    """The file's size, after opening it once: a missing, unreadable or odd file is one line."""
    try:
        with open(path, "rb") as f:
            f.read(1)
            return os.fstat(f.fileno()).st_size
    except OSError as exc:
        raise read_error(path, exc) from None


def _check_json_lines(path: str, fmt: str) -> None:
    """A JSON array, or one object spread over lines, where JSON Lines are expected: say so
    (instead of "line 1: not valid JSON", which sends people looking at the wrong thing)."""
    try:
        if fmt == "jsonl.gz":
            with gzip.open(path, "rb") as f:
                head = f.read(1 << 16)
        else:
            with open(path, "rb") as f:
                head = f.read(1 << 16)
    except (OSError, EOFError) as exc:
        if fmt == "jsonl.gz":
            raise DataError(f"{path}: not a readable gzip file ({_first_line(exc)})") from None
        raise read_error(path, exc) from None
    if head.startswith(b"\xef\xbb\xbf"):
        raise DataError(
            f"{path}: starts with a UTF-8 byte-order mark; expected JSON Lines "
            "(save it as UTF-8 without BOM)"
        )
    lines = [line for line in head.split(b"\n") if line.strip()]
    if not lines:
        return
    first = lines[0].strip()
    if first[:1] not in (b"[", b"{"):
        return
    try:
        value = orjson.loads(lines[0])
    except orjson.JSONDecodeError:
        # '[' or '{' that does not close on its line: a pretty-printed JSON document
        if first[:1] == b"{" and not first.endswith((b"{", b"[", b",")):
            return  # a damaged line: reported with its line number when read
        kind = "a JSON array" if first[:1] == b"[" else "one JSON object spread over several lines"
        raise DataError(
            f"{path}: expected JSON Lines (one JSON object per line), found {kind}"
            " (convert it, e.g. jq -c '.[]')"
        ) from None
    if isinstance(value, list) and len(lines) == 1 and value and isinstance(value[0], dict):
        raise DataError(
            f"{path}: expected JSON Lines (one JSON object per line), found a JSON "
            "array of objects on one line (convert it, e.g. jq -c '.[]')"
        )


def shard_paths(shard_dir: str, task_index: int, domain: str, split: str) -> tuple[str, str]:
    stem = os.path.join(shard_dir, f"t{task_index:07d}.{domain}.{split}")
    return stem + ".tok", stem + ".len.npy"


def is_eval(seed_key: bytes, text: str, fraction: float) -> bool:
    """Held-out membership from a hash of the text: independent of order and worker count, and
    identical documents always land in the same split (no train/eval leakage via duplicates)."""
    if fraction <= 0:
        return False
    digest = hashlib.blake2b(
        text.encode("utf-8", "surrogatepass"), digest_size=8, key=seed_key
    ).digest()
    return int.from_bytes(digest, "little") < fraction * 2**64


# Per-process caches: a worker builds its tokenizer and taxonomy once, not per task.
_worker_state: dict = {}


def _state(
    tokenizer_spec: dict, tokenizer_dir: str, extra_domains: tuple
) -> tuple[Tokenizer, Taxonomy]:
    key = (repr(tokenizer_spec), tokenizer_dir, extra_domains)
    if _worker_state.get("key") != key:
        _worker_state["key"] = key
        _worker_state["tok"] = load_tokenizer(tokenizer_spec, tokenizer_dir)
        _worker_state["tax"] = Taxonomy(extra_domains)
    return _worker_state["tok"], _worker_state["tax"]


def _decontaminator(path: str):
    if _worker_state.get("decontam_path") != path:
        from ablate.data.tagging.decontam import Decontaminator

        _worker_state["decontam_path"] = path
        _worker_state["decontam"] = Decontaminator.load(path)
    return _worker_state["decontam"]


def _decider(decide: tuple):
    """``scores -> domain`` for a tagged source, with the YAML's thresholds."""
    import json

    from ablate.data.tagging.run import cached_tagger

    name, options_json, thresholds_json = decide
    tagger = cached_tagger(name, options_json)
    thresholds = json.loads(thresholds_json)
    return lambda scores: tagger.decide(scores, thresholds)


DECONTAM_BATCH_DOCS = 512  # documents checked per vectorised lookup


def run_task(
    task: IngestJob,
    tokenizer_spec: dict,
    tokenizer_dir: str,
    extra_domains: tuple,
    seed: int,
    shard_dir: str,
) -> TaskResult:
    """Tokenize one task's rows into shard files; raise ``DataError`` naming file/row/field."""
    # Tokenizer parallelism is the worker count's job; the library's own threads would make
    # "1 worker" mean several cores and oversubscribe when there are several workers.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    tokenizer, taxonomy = _state(tokenizer_spec, tokenizer_dir, extra_domains)
    result = TaskResult(task.index)
    seed_key = f"{seed}:{task.source}".encode()
    pending: dict[tuple[str, str], list[str]] = {}
    writers: dict[tuple[str, str], tuple] = {}
    hasher = hashlib.sha256()

    def flush(key):
        texts = pending.pop(key, None)
        if not texts:
            return
        tokens, lengths = tokenizer.encode_documents(texts)
        if key not in writers:
            tok_path, _ = shard_paths(shard_dir, task.index, *key)
            writers[key] = (open(tok_path, "wb"), [])
        f, all_lengths = writers[key]
        f.write(tokens.tobytes())
        all_lengths.append(lengths)
        c = result.counts.setdefault(key, [0, 0, 0])
        c[0] += len(texts)
        c[1] += int(lengths.sum())
        c[2] += sum(len(t.encode("utf-8", "surrogatepass")) for t in texts)

    decide = _decider(task.decide) if task.decide else None
    decontam = _decontaminator(task.decontam) if task.decontam else None
    checking: list[tuple[str, str]] = []  # (domain, text) waiting for the decontamination check

    def route(batch: list[tuple[str, str]]) -> None:
        """Check a batch against the eval n-grams, then queue the kept documents to tokenize."""
        hits = decontam.hits_batch([t for _, t in batch]) if decontam and batch else None
        for i, (domain, text) in enumerate(batch):
            if hits is not None and hits[i]:
                result.contaminated += 1
                for name in hits[i]:
                    result.by_eval_set[name] = result.by_eval_set.get(name, 0) + 1
                if task.decontam_action == "drop":
                    result.dropped += 1
                    continue
            split = "eval" if is_eval(seed_key, text, task.eval_fraction) else "train"
            bucket = pending.setdefault((domain, split), [])
            bucket.append(text)
            if len(bucket) >= ENCODE_BATCH_DOCS:
                flush((domain, split))

    try:
        for where, row in _rows(task, hasher):
            if not isinstance(row, dict):
                raise DataError(f"{where}: expected a JSON object, got {_json_type(row)}")
            text = row.get(task.text_field)
            if task.text_field not in row:
                raise DataError(
                    f"{where}: missing text field {task.text_field!r} "
                    f"(fields: {_names(row) or 'none'})"
                )
            if not isinstance(text, str):
                raise DataError(
                    f"{where}: field {task.text_field!r} must be a string, got {_json_type(text)}"
                )
            if task.domain is not None:
                domain = task.domain
            elif decide is not None:
                scores = row.get("scores")
                if not isinstance(scores, dict):
                    raise DataError(f"{where}: a tagged row needs its 'scores' (a mapping)")
                domain = taxonomy.validate(decide(scores), lambda: f"{where}: decided domain")
            else:
                if task.domain_field not in row:
                    raise DataError(
                        f"{where}: missing domain field {task.domain_field!r} "
                        "and the source sets no 'domain'"
                    )
                domain = taxonomy.validate(
                    row[task.domain_field], lambda: f"{where}: field {task.domain_field!r}"
                )
            result.rows += 1
            if not text:
                result.skipped_empty += 1
                continue
            checking.append((domain, text))
            if len(checking) >= DECONTAM_BATCH_DOCS:
                route(checking)
                checking = []
        route(checking)
        for key in list(pending):
            flush(key)
    finally:
        error = _close_shards(writers, shard_dir, task.index)
    if error is not None:  # reached only when the rows were read without error
        raise error
    result.content_hash = hasher.hexdigest()
    return result


def _close_shards(writers: dict, shard_dir: str, index: int) -> OSError | None:
    """Close every shard file and write its lengths; return the first write error (a full
    disk) instead of raising it, so that every file is closed (an unclosed one would print
    "Exception ignored" when collected) and an error already in flight is not replaced."""
    error = None
    for key, (f, lengths) in writers.items():
        try:
            f.close()
            np.save(
                shard_paths(shard_dir, index, *key)[1],
                np.concatenate(lengths) if lengths else np.zeros(0, np.int64),
            )
        except OSError as exc:
            error = error or exc
    return error


def _rows(task: IngestJob, hasher):
    if task.fmt == "parquet":
        yield from _parquet_rows(task, hasher)
    else:
        yield from _jsonl_rows(task, hasher)


def _jsonl_rows(task: IngestJob, hasher):
    if task.fmt == "jsonl.gz":
        try:
            with gzip.open(task.path, "rb") as f:
                data = f.read()
        except (OSError, EOFError) as exc:
            raise DataError(f"{task.path}: not a readable gzip file ({_first_line(exc)})") from None
    else:
        try:
            with open(task.path, "rb") as f:
                f.seek(task.start)
                data = f.read(task.end - task.start)
        except OSError as exc:
            raise read_error(task.path, exc) from None
    hasher.update(data)
    line_no = None  # computed only when an error needs it
    for i, line in enumerate(data.split(b"\n")):
        if not line.strip():
            continue
        try:
            row = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            line_no = _line_number(task, i)
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as u:
                raise DataError(
                    f"{task.path}: line {line_no}: invalid UTF-8 at byte {u.start} of the line"
                ) from None
            raise DataError(f"{task.path}: line {line_no}: not valid JSON ({exc})") from None
        yield _LazyWhere(task, i), row


class _LazyWhere:
    """``file: line N`` for messages, computed only when a message is actually made."""

    def __init__(self, task: IngestJob, i: int):
        self.task, self.i = task, i

    def __str__(self) -> str:
        return f"{self.task.path}: line {_line_number(self.task, self.i)}"

    def __format__(self, spec: str) -> str:
        return str(self)


def _line_number(task: IngestJob, i: int) -> int:
    """1-based line number of line ``i`` of the task's chunk, counting lines before the chunk."""
    if task.start == 0:
        return i + 1
    with open(task.path, "rb") as f:
        before = f.read(task.start).count(b"\n")
    return before + i + 1


def _parquet_rows(task: IngestJob, hasher):
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(task.path)
        names = pf.schema_arrow.names
        if task.text_field not in names:
            raise DataError(
                f"{task.path}: no column {task.text_field!r} (columns: {_names(names)})"
            )
        columns = [task.text_field] + (
            [task.domain_field] if task.domain is None and task.domain_field in names else []
        )
        table = pf.read_row_group(task.start, columns=columns)
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"{task.path}: not a readable Parquet file ({_first_line(exc)})") from None
    first_row = sum(pf.metadata.row_group(g).num_rows for g in range(task.start))
    data = table.to_pydict()
    texts = data[task.text_field]
    domains = data.get(task.domain_field)
    for j, text in enumerate(texts):
        if isinstance(text, str):
            hasher.update(text.encode("utf-8", "surrogatepass"))
        row = {task.text_field: text}
        if domains is not None:
            row[task.domain_field] = domains[j]
        yield f"{task.path}: row {first_row + j + 1}", row


def _names(names) -> str:
    """Field or column names for a message, bounded: a row may have thousands of keys."""
    names = [show(str(n), 40)[1:-1] for n in list(names)[:9]]
    return ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")


def _json_type(value) -> str:
    return "null" if value is None else type(value).__name__


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
