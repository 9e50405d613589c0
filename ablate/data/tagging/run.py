"""The tag step: documents of the tagged sources -> tagged shards (``ablate data tag``, and
``ablate data prepare`` on a YAML whose sources name a tagger).

Work is cut into jobs exactly as ingestion cuts it (``ingest.split_file``: a 16 MiB line-aligned
slice of a JSONL file, a Parquet row group), so job boundaries depend only on the files; worker
processes tag jobs in any order, and the parent renames each job's shard into place in job
order. The output is therefore byte-identical whatever the worker count.

A job's shard is JSON Lines, one row per segment, in document order then segment order::

    {"text": ..., "domain": ..., "scores": {...}, "tagger": "math", "tagger_version": "1",
     "source": "<source name>", "file": "<input file, relative to the corpora YAML>",
     "row": <1-based line (JSONL) or row (Parquet) of the document>, "segment": i,
     "segments": k, "ref": {...}}

``file`` + ``row`` + ``segment`` is each segment's provenance (``ref`` carries what a generated
source knows: a stdlib module, an MBPP task id, a MATH unique id, a file's path). ``domain`` is
decided with the thresholds in force when tagging; ``ablate data prepare`` decides again from
``scores`` with the YAML's thresholds, so a density sweep re-thresholds without re-tagging.

``OUT/tagged.json`` (written last) records per source: the tagger (name, version, options), the
thresholds, the input fingerprint, the parts, document/segment counts per domain and skipped
documents per reason. No timestamps: same input, same bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from concurrent.futures import as_completed
from dataclasses import dataclass, field

import orjson

from ablate.data.ingest import IngestJob, _json_type, _names, _rows, split_file
from ablate.errors import AblateError, DataError, show

FORMAT = "ablate.tagged/1"
REF_FIELDS = ("module", "task_id", "id", "path")  # a generated/files row's own provenance


@dataclass(frozen=True)
class TagJob:
    index: int  # over all jobs of the run
    part: int  # within its source: the part file it becomes
    read: IngestJob  # the slice to read
    shown_path: str  # the input file as the output names it (relative to the corpora YAML)
    tagger: str
    options_json: str  # JSON: jobs are pickled to workers and must stay hashable
    thresholds_json: str
    kind: str
    on_invalid: str
    out: str  # the shard this job writes


@dataclass
class TagJobResult:
    index: int
    documents: int = 0
    segments: int = 0
    empty: int = 0
    skipped: dict = field(default_factory=dict)  # reason -> documents
    domains: dict = field(default_factory=dict)  # domain -> [segments, utf-8 bytes]
    bytes_in: int = 0


_taggers: dict = {}  # per process: (name, options) -> tagger


def cached_tagger(name: str, options_json: str):
    key = (name, options_json)
    if key not in _taggers:
        from ablate.data.tagging.registry import build_tagger

        _taggers[key] = build_tagger(name, json.loads(options_json), "tagger_options")
    return _taggers[key]


def run_tag_job(job: TagJob) -> TagJobResult:
    """Tag one slice of one input into ``job.out``; a bad row is one ``DataError`` line."""
    from ablate.data.tagging.base import KINDS, Document, SkipDocument

    tagger = cached_tagger(job.tagger, job.options_json)
    thresholds = json.loads(job.thresholds_json)
    result = TagJobResult(job.index)
    read = job.read
    first_line = _first_line_number(read)
    hasher = hashlib.sha256()  # ingest's reader wants one; the fingerprint is taken per file
    with open(job.out, "wb") as out:
        for where, row in _rows(read, hasher):
            if not isinstance(row, dict):
                raise DataError(f"{where}: expected a JSON object, got {_json_type(row)}")
            if read.text_field not in row:
                raise DataError(
                    f"{where}: missing text field {read.text_field!r} "
                    f"(fields: {_names(row) or 'none'})"
                )
            text = row[read.text_field]
            if not isinstance(text, str):
                raise DataError(
                    f"{where}: field {read.text_field!r} must be a string, got {_json_type(text)}"
                )
            result.documents += 1
            result.bytes_in += len(text.encode("utf-8", "surrogatepass"))
            if not text.strip():
                result.empty += 1
                continue
            kind = job.kind
            if kind == "auto" and row.get("kind") in KINDS:
                kind = row["kind"]  # a 'files' row knows its file's kind
            number = (first_line + where.i) if hasattr(where, "i") else _row_number(where)
            ref = {k: row[k] for k in REF_FIELDS if k in row}
            try:
                segments = tagger.segments(Document(text, kind))
            except SkipDocument as exc:
                if job.on_invalid != "skip":
                    # name what the user has: the file a 'files' row came from, never staging
                    origin = ref.get("path") or (
                        f"{job.shown_path}: line {number}" if job.shown_path[:1] == "<" else where
                    )
                    raise DataError(
                        f"{origin}: {exc} (set on_invalid: skip on the source to skip and count "
                        "such documents)"
                    ) from None
                reason = str(exc)
                result.skipped[reason] = result.skipped.get(reason, 0) + 1
                continue
            for i, seg in enumerate(segments):
                domain = tagger.decide(seg.scores, thresholds)
                record = {
                    "text": seg.text,
                    "domain": domain,
                    "scores": seg.scores,
                    "tagger": tagger.name,
                    "tagger_version": tagger.version,
                    "source": read.source,
                    "file": job.shown_path,
                    "row": number,
                    "segment": i,
                    "segments": len(segments),
                }
                if ref:
                    record["ref"] = ref
                out.write(orjson.dumps(record) + b"\n")
                result.segments += 1
                counts = result.domains.setdefault(domain, [0, 0])
                counts[0] += 1
                counts[1] += len(seg.text.encode("utf-8", "surrogatepass"))
    return result


def _first_line_number(read: IngestJob) -> int:
    """1-based number of the slice's first line (JSONL); rows of Parquet say their own."""
    if read.fmt != "jsonl" or read.start == 0:
        return 1
    with open(read.path, "rb") as f:
        return f.read(read.start).count(b"\n") + 1


def _row_number(where: object) -> int:
    """Parquet rows come with 'path: row N'."""
    return int(str(where).rsplit(" ", 1)[-1])


def files_fingerprint(paths: list[str]) -> str:
    """The inputs of one source: sha256 over each file's sha256, in order."""
    outer = hashlib.sha256()
    for path in paths:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        outer.update(h.digest())
    return outer.hexdigest()


@dataclass
class TaggedSource:
    """One source's tagged shards, and what ``tagged.json`` says about them."""

    name: str
    parts: list[str]  # absolute paths, in order
    record: dict  # its entry in tagged.json


def tagging_identity(source) -> dict:
    """What must match for tagged shards to be reused: tagger, options, reading rules."""
    from ablate.data.tagging.registry import build_tagger

    tagger = build_tagger(source.tagger, source.tagger_options, f"{source.where}.tagger_options")
    return {
        "tagger": tagger.describe(),
        "kind": source.kind,
        "on_invalid": source.on_invalid,
        "text_field": source.text_field,
    }


def tag_sources(
    sources: list,
    inputs: dict[str, list[str]],
    base_dir: str,
    out_dir: str,
    workers: int | None,
    progress: bool | None,
    materialized: frozenset = frozenset(),
) -> dict[str, TaggedSource]:
    """Tag every source in ``sources`` (each with a tagger) from its input files (JSONL or
    Parquet: generated and 'files' sources are materialized to JSONL first, and named in
    ``materialized``) into ``out_dir/<source>/part-NNNNN.jsonl``."""
    from ablate.data.ingest import file_format

    shard_dir = os.path.join(out_dir, ".tagging")
    os.makedirs(shard_dir, exist_ok=True)
    jobs: list[TagJob] = []
    for source in sources:
        identity = tagging_identity(source)
        part = 0
        for path in inputs[source.name]:
            fmt = file_format(path) or source.reader
            if source.name in materialized:
                shown = f"<{source.reader}>"  # rows made by ablate: each carries its 'ref'
            else:
                shown = os.path.relpath(path, base_dir) if _inside(path, base_dir) else path
            for start, end in split_file(path, fmt):
                jobs.append(
                    TagJob(
                        index=len(jobs),
                        part=part,
                        read=IngestJob(
                            len(jobs),
                            source.name,
                            path,
                            fmt,
                            start,
                            end,
                            None,
                            source.text_field,
                            source.domain_field,
                            0.0,
                        ),  # fmt: skip
                        shown_path=shown,
                        tagger=source.tagger,
                        options_json=json.dumps(identity["tagger"]["options"], sort_keys=True),
                        thresholds_json=json.dumps(source.thresholds, sort_keys=True),
                        kind=source.kind,
                        on_invalid=source.on_invalid,
                        out=os.path.join(shard_dir, f"j{len(jobs):07d}.jsonl"),
                    )
                )
                part += 1
    results = run_jobs(jobs, workers, progress)
    tagged: dict[str, TaggedSource] = {}
    for source in sources:
        mine = [j for j in jobs if j.read.source == source.name]
        os.makedirs(os.path.join(out_dir, source.name), exist_ok=True)
        parts = []
        for job in mine:
            if os.path.getsize(job.out) == 0:  # nothing kept from this slice: no part
                os.remove(job.out)
                continue
            final = os.path.join(out_dir, source.name, f"part-{job.part:05d}.jsonl")
            os.replace(job.out, final)
            parts.append(final)
        record = _source_record(source, [results[j.index] for j in mine], parts, out_dir)
        record["inputs_sha256"] = files_fingerprint(inputs[source.name])
        tagged[source.name] = TaggedSource(source.name, parts, record)
    os.rmdir(shard_dir)
    return tagged


def _inside(path: str, directory: str) -> bool:
    return os.path.abspath(path).startswith(os.path.abspath(directory).rstrip(os.sep) + os.sep)


def _source_record(source, results: list[TagJobResult], parts: list[str], out_dir: str) -> dict:
    domains: dict = {}
    skipped: dict = {}
    for r in results:
        for d, (n, b) in r.domains.items():
            c = domains.setdefault(d, {"segments": 0, "bytes": 0})
            c["segments"] += n
            c["bytes"] += b
        for reason, n in r.skipped.items():
            skipped[reason] = skipped.get(reason, 0) + n
    return {
        **tagging_identity(source),
        "thresholds": source.thresholds,
        "parts": [os.path.relpath(p, out_dir) for p in parts],
        "documents": sum(r.documents for r in results),
        "empty": sum(r.empty for r in results),
        "segments": sum(r.segments for r in results),
        "skipped": dict(sorted(skipped.items())),
        "domains": dict(sorted(domains.items())),
    }


def run_jobs(jobs: list[TagJob], workers: int | None, progress: bool | None) -> dict:
    """Run every job (in worker processes when more than one), with a progress bar in bytes."""
    from tqdm import tqdm

    from ablate.data.workers import kill_workers, worker_pool

    workers = max(1, min(workers or os.cpu_count() or 1, len(jobs) or 1))
    results: dict[int, TagJobResult] = {}
    bar = tqdm(
        total=sum(j.read.end - j.read.start if j.read.fmt != "parquet" else 1 for j in jobs),
        unit="B" if all(j.read.fmt != "parquet" for j in jobs) else "it",
        unit_scale=True,
        desc="tagging",
        file=sys.stderr,
        disable=(not sys.stderr.isatty()) if progress is None else not progress,
    )
    segments = 0

    def done(job: TagJob, result: TagJobResult) -> None:
        nonlocal segments
        results[job.index] = result
        segments += result.segments
        bar.update(job.read.end - job.read.start if job.read.fmt != "parquet" else 1)
        bar.set_postfix(segments=f"{segments:,}", refresh=False)

    with bar:
        if workers == 1:
            for job in jobs:
                done(job, run_tag_job(job))
        else:
            with worker_pool(workers) as pool:
                futures = {pool.submit(run_tag_job, job): job for job in jobs}
                try:
                    for fut in as_completed(futures):
                        done(futures[fut], fut.result())
                except BaseException as exc:
                    if not isinstance(exc, Exception):
                        kill_workers(pool)
                    pool.shutdown(wait=True, cancel_futures=True)
                    raise
    return results


def write_tagged_json(out_dir: str, tagged: dict[str, TaggedSource]) -> str:
    path = os.path.join(out_dir, "tagged.json")
    body = {"format": FORMAT, "sources": {n: t.record for n, t in tagged.items()}}
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps(body, indent=2) + "\n")
    return path


def load_tagged(tag_dir: str, where: str = "--tagged") -> dict:
    """``DIR/tagged.json`` of an earlier ``ablate data tag``: its per-source records."""
    path = os.path.join(tag_dir, "tagged.json")
    if not os.path.isfile(path):
        raise AblateError(
            f"{where}: {tag_dir} holds no tagged.json (write it with 'ablate data tag SPEC "
            "--out DIR')"
        )
    from ablate.io import read_json

    raw = read_json(path, "tagged shards index")
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise AblateError(f"{path}: format: not an ablate tagged.json (expected {FORMAT!r})")
    sources = raw.get("sources")
    if not isinstance(sources, dict):
        raise AblateError(f"{path}: sources: {show(sources)} must be a mapping")
    for name, rec in sources.items():
        parts = rec.get("parts") if isinstance(rec, dict) else None
        if not isinstance(parts, list) or not all(isinstance(p, str) for p in parts):
            raise AblateError(f"{path}: sources.{name}.parts: must be a list of files")
        for p in parts:
            if (
                os.path.isabs(p)
                or ".." in p.split("/")
                or not os.path.isfile(os.path.join(tag_dir, p))
            ):
                raise AblateError(
                    f"{path}: sources.{name}.parts: {show(p)} is missing (tag again with "
                    "'ablate data tag')"
                )
    return sources
