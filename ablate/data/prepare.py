"""``ablate data prepare``: corpora spec -> megatron-core indexed datasets + manifest.

1. Generated sources (toy world, stdlib, GSM8K) are first written out as JSONL, so that every
   source enters through the same ingestion path as a user's own files.
2. Every input file is cut into tasks (see ``ingest``); worker processes tokenize tasks into
   shard files.
3. Shards are appended, in task order, to one megatron-core dataset per (source, domain) and one
   held-out dataset per (source, domain).
4. The manifest is written last, and the whole directory appears at ``--out`` by one rename.

What it promises (nothing lost, nothing left behind):

- ``--out`` (rules in ``outdir``) is refused when it equals, contains or lies inside an input
  (symlinks resolved), so no run can write over, or later read back, its own corpus.
- ``--overwrite`` replaces only an empty directory or a previous prepare's output, recognised by
  its manifest; it removes only the files that manifest names (datasets, probes, raw rows of
  generated sources, tokenizer, manifest). Any other file there is a refusal naming it.
- The work happens in a staging directory beside ``--out`` named by ``ablate.io.tmp_name``
  (owner host and pid). It is removed on any error, on Ctrl-C and on SIGTERM (turned into an
  interrupt while prepare runs); after a SIGKILL the next prepare into the same parent removes
  it (``remove_stale_temporaries``). Workers die with the parent (``workers``).
- A full disk, a read-only file system or a missing permission is one line naming ``--out``.
- A broken symbolic link among the inputs is refused, naming it (not skipped: a corpus that
  silently loses a file gives a different dataset with no warning).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from concurrent.futures import as_completed
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from ablate.data import generated, outdir
from ablate.data.corpora import CorporaSpec, load_corpora_spec, resolve_files
from ablate.data.files_corpus import materialize_files
from ablate.data.indexed import sharded_builder
from ablate.data.ingest import IngestJob, TaskResult, file_format, run_task, shard_paths, split_file
from ablate.data.manifest import DatasetEntry, Manifest
from ablate.data.tokenizer import HFTokenizer, Tokenizer, load_tokenizer
from ablate.data.workers import check_workers, kill_workers, worker_pool
from ablate.errors import AblateError, DataError
from ablate.faults import terminated_as_exception
from ablate.io import remove_path, remove_stale_temporaries, tmp_name


@dataclass
class PrepareResult:
    manifest: Manifest
    state: str  # created | unchanged | replaced


def prepare(
    spec_arg: str,
    out_dir: str,
    workers: int | None = None,
    overwrite: bool = False,
    progress: bool | None = None,
    tagged: str | None = None,
) -> PrepareResult:
    check_workers(workers)
    spec = load_corpora_spec(spec_arg)
    tokenizer = load_tokenizer(spec.tokenizer, spec.base_dir, where=f"{spec.origin}: tokenizer")
    out_dir = os.path.realpath(out_dir)  # a symlinked --out is written where it points
    files = {s.name: resolve_files(s, spec.base_dir) for s in spec.sources if not s.generated}
    outdir.check_outside_inputs(out_dir, spec, files)
    outdir.check_out_dir(out_dir, spec, tokenizer, overwrite)
    # SIGTERM unwinds like an error, so the staging directory is removed (exit 143)
    with terminated_as_exception() as sigterm:
        created = outdir.make_parents(out_dir)
        staging = tmp_name(out_dir)
        done = False
        try:
            with outdir.write_errors(out_dir, staging):
                remove_stale_temporaries(os.path.dirname(out_dir))
                remove_path(staging)  # a dead run's whose pid was ours (pids restart in containers)
                os.mkdir(staging)  # 0o777 & ~umask: the data directory is meant to be shared
                manifest = _build(spec, tokenizer, staging, files, workers, progress, tagged)
                result = PrepareResult(*outdir.install(staging, out_dir, manifest, overwrite))
            done = True
            return result
        finally:
            sigterm.armed = False  # a second SIGTERM must not cut the cleanup short
            remove_path(staging)
            if not done:
                outdir.remove_made_parents(created)


def _build(
    spec: CorporaSpec,
    tokenizer: Tokenizer,
    staging: str,
    source_files: dict,
    workers: int | None,
    progress: bool | None,
    tagged_dir: str | None = None,
) -> Manifest:
    raw_dir = os.path.join(staging, "raw")
    shard_dir = os.path.join(staging, ".shards")
    os.makedirs(shard_dir)
    probes: dict = {}
    inputs_by_source: dict[str, list[str]] = {}
    materialized: set[str] = set()
    for source in spec.sources:
        if source.generated:
            made = generated.materialize(source, raw_dir, spec.seed, spec.base_dir)
            inputs_by_source[source.name] = made.files
            materialized.add(source.name)
            for name, info in made.probes.items():
                probes[name] = {**info, "path": os.path.relpath(info["path"], staging)}
        elif source.reader == "files":
            made = materialize_files(source, source_files[source.name], raw_dir, spec.base_dir)
            inputs_by_source[source.name] = made.files
            materialized.add(source.name)
        else:
            inputs_by_source[source.name] = source_files[source.name]
    tagging = _tag(spec, staging, inputs_by_source, materialized, tagged_dir, workers, progress)
    decontam_path, decontamination = _decontaminator(spec)
    try:
        return _ingest(
            spec, tokenizer, staging, shard_dir, workers, progress, probes, inputs_by_source,
            tagging, decontam_path, decontamination,
        )  # fmt: skip
    finally:
        if decontam_path:
            os.remove(decontam_path)


def _ingest(
    spec, tokenizer, staging, shard_dir, workers, progress, probes, inputs_by_source, tagging,
    decontam_path, decontamination,
) -> Manifest:  # fmt: skip

    tasks: list[IngestJob] = []
    for source in spec.sources:
        decide = None
        if source.tagger:  # its rows are the tagged shards: text, scores, domain
            decide = (
                source.tagger,
                json.dumps(tagging[source.name]["tagger"]["options"], sort_keys=True),
                json.dumps(source.thresholds, sort_keys=True),
            )
        for path in inputs_by_source[source.name]:
            fmt = file_format(path) or source.reader
            for start, end in split_file(path, fmt):
                tasks.append(
                    IngestJob(
                        len(tasks),
                        source.name,
                        path,
                        fmt,
                        start,
                        end,
                        None if source.tagger else source.domain,
                        "text" if source.tagger else source.text_field,
                        "domain" if source.tagger else source.domain_field,
                        source.eval_fraction,
                        decide=decide,
                        decontam=decontam_path,
                        decontam_action=spec.decontaminate.action if decontam_path else "drop",
                    )
                )

    tok_spec = tokenizer.describe()
    merger = _Merger(staging, shard_dir, tokenizer)
    try:
        results = _run_tasks(
            tasks,
            tok_spec,
            tuple(spec.domains),
            spec.seed,
            shard_dir,
            workers,
            progress,
            on_next_in_order=merger.add,
        )
        datasets, eval_datasets = merger.finish()
    except BaseException:
        merger.abort()
        raise
    shutil.rmtree(shard_dir)
    if decontam_path:
        decontamination["sources"] = _decontamination_counts(spec, tasks, results)
    for entry in datasets + eval_datasets:
        if entry.source in tagging:  # each tagged dataset names its tagger and thresholds
            record = tagging[entry.source]
            entry.provenance = {"tagger": record["tagger"], "thresholds": record["thresholds"]}

    rows_per_file: dict[str, int] = {}
    for task in tasks:
        rows_per_file[task.path] = rows_per_file.get(task.path, 0) + results[task.index].rows
    for path, rows in rows_per_file.items():
        if rows == 0:
            raise DataError(f"{path}: empty file (no rows)")
    inputs = {
        source.name: hashlib.sha256(
            "".join(
                results[t.index].content_hash for t in tasks if t.source == source.name
            ).encode()
        ).hexdigest()
        for source in spec.sources
    }

    if isinstance(tokenizer, HFTokenizer):
        # The data directory carries its tokenizer, so training and eval never look elsewhere.
        shutil.copyfile(tokenizer.path, os.path.join(staging, "tokenizer.json"))
        tok_spec = {**tok_spec, "path": "tokenizer.json"}
    manifest = Manifest(
        tokenizer=tok_spec,
        seed=spec.seed,
        domains=list(spec.domains),
        datasets=datasets,
        eval_datasets=eval_datasets,
        probes=probes,
        spec=spec.to_dict(),
        inputs=inputs,
        tagging=tagging,
        decontamination=decontamination,
        path=os.path.join(staging, "manifest.json"),
    )
    with open(manifest.path, "w", encoding="utf-8") as f:
        f.write(manifest.to_json())
    return manifest


def _tag(spec, staging, inputs_by_source, materialized, tagged_dir, workers, progress) -> dict:
    """Tag the sources that name a tagger, or reuse an earlier ``ablate data tag`` output for
    the ones it tagged from the same inputs with the same tagger; their inputs become the
    tagged shards. Returns each tagged source's record (for the manifest)."""
    from ablate.data.tagging.run import (
        files_fingerprint,
        load_tagged,
        tag_sources,
        tagging_identity,
    )

    tagging: dict = {}
    earlier = load_tagged(tagged_dir) if tagged_dir else {}
    to_tag = []
    for source in (s for s in spec.sources if s.tagger):
        record = earlier.get(source.name)
        fresh = {**tagging_identity(source), "inputs_sha256": None}
        if record is not None:
            fresh["inputs_sha256"] = files_fingerprint(inputs_by_source[source.name])
            same = all(record.get(k) == v for k, v in fresh.items())
            if same:
                inputs_by_source[source.name] = [
                    os.path.join(tagged_dir, p) for p in record["parts"]
                ]
                tagging[source.name] = {
                    **record,
                    "thresholds": source.thresholds,
                    "parts": [],  # not in this data directory: see reused
                    "reused": record["parts"],
                }
                continue
            changed = next(k for k, v in fresh.items() if record.get(k) != v)
            what = {"tagger": "tagger or tagger options", "inputs_sha256": "input"}.get(
                changed, changed
            )
            print(
                f"note: {source.where}: tagging again (the shards in {tagged_dir} differ in "
                f"their {what})",
                file=sys.stderr,
            )
        to_tag.append(source)
    if to_tag:
        done = tag_sources(
            to_tag,
            inputs_by_source,
            spec.base_dir,
            os.path.join(staging, "tagged"),
            workers,
            progress,
            frozenset(materialized),
        )
        for name, t in done.items():
            inputs_by_source[name] = t.parts
            tagging[name] = {
                **t.record,
                "thresholds": next(s.thresholds for s in to_tag if s.name == name),
                "parts": [os.path.join("tagged", p) for p in t.record["parts"]],
            }
    return tagging


def _decontaminator(spec: CorporaSpec) -> tuple[str | None, dict]:
    """The eval n-grams saved for the workers, and the manifest's record of what they hold.
    Sets the YAML names must exist; of the default sets, the ones not found are noted. The
    file (a few MB) goes to the temp dir, not beside --out: it is scratch, and a nearly full
    output disk must not fail on it."""
    if spec.decontaminate is None:
        return None, {"enabled": False}
    from ablate.data.tagging.decontam import Decontaminator, load_eval_sets

    cfg = spec.decontaminate
    where = f"{spec.origin}: decontaminate.against"
    sets, missing = [], []
    if cfg.explicit:  # the YAML named them: each must be there
        sets = load_eval_sets(cfg.against, spec.base_dir, where, cfg.lm_eval_include)
    else:  # the default sets: check the ones that are here, note the others
        for name in cfg.against:
            try:
                sets.extend(load_eval_sets([name], spec.base_dir, where, cfg.lm_eval_include))
            except AblateError:
                missing.append(name)
    if missing:
        print(
            "note: decontamination: default eval sets not found, not checked: "
            + ", ".join(missing),
            file=sys.stderr,
        )
    record = {"enabled": bool(sets), "ngram": cfg.ngram, "action": cfg.action, "missing": missing}
    if not sets:
        return None, record
    dc = Decontaminator.cached(sets, n=cfg.ngram)
    fd, path = tempfile.mkstemp(prefix="ablate-decontam-", suffix=".npz")
    os.close(fd)
    try:
        dc.save(path)
    except BaseException:
        os.remove(path)
        raise
    record["against"] = dc.describe()
    return path, record


def _decontamination_counts(spec: CorporaSpec, tasks, results) -> dict:
    """Per source: documents checked, caught (by eval set) and dropped."""
    counts = {}
    for source in spec.sources:
        mine = [results[t.index] for t in tasks if t.source == source.name]
        by_set: dict[str, int] = {}
        for r in mine:
            for name, n in r.by_eval_set.items():
                by_set[name] = by_set.get(name, 0) + n
        counts[source.name] = {
            "documents": sum(r.rows - r.skipped_empty for r in mine),
            "contaminated": sum(r.contaminated for r in mine),
            "dropped": sum(r.dropped for r in mine),
            "by_eval_set": dict(sorted(by_set.items())),
        }
    return counts


@dataclass
class _OpenDataset:
    builder: object  # indexed.sharded_builder
    documents: int = 0
    tokens: int = 0
    bytes: int = 0


class _Merger:
    """Appends task shards to one builder per (source, domain, split), strictly in task order.

    Fed while later tasks are still being tokenized, so the serial copy overlaps the parallel
    work, and each shard is deleted as soon as it is copied (disk peak: output + in-flight
    shards, not output x 2). Tasks arrive grouped by source, so only one source's builders
    are open at a time.
    """

    def __init__(self, staging: str, shard_dir: str, tokenizer: Tokenizer):
        self.staging, self.shard_dir, self.tokenizer = staging, shard_dir, tokenizer
        self.source: str | None = None
        self.open: dict[
            tuple[str, str], _OpenDataset
        ] = {}  # (domain, split) -> its builder and counts
        self.entries: list[DatasetEntry] = []

    def add(self, task: IngestJob, result: TaskResult) -> None:
        if task.source != self.source:
            self._close_source()
            self.source = task.source
        for key, (documents, tokens, nbytes) in result.counts.items():
            if key not in self.open:
                domain, split = key
                prefix = f"{task.source}/{domain}" + (".eval" if split == "eval" else "")
                os.makedirs(os.path.join(self.staging, task.source), exist_ok=True)
                self.open[key] = _OpenDataset(
                    sharded_builder(os.path.join(self.staging, prefix), self.tokenizer.dtype)
                )
            ds = self.open[key]
            tok_path, len_path = shard_paths(self.shard_dir, task.index, *key)
            ds.builder.add_shard(tok_path, np.load(len_path))
            ds.documents += documents
            ds.tokens += tokens
            ds.bytes += nbytes
            os.remove(tok_path)
            os.remove(len_path)

    def _close_source(self) -> None:
        for (domain, split), ds in sorted(self.open.items(), key=lambda kv: kv[0]):
            fingerprint, index_sha256 = ds.builder.finalize()
            self.entries.append(
                DatasetEntry(
                    domain=domain,
                    prefix=os.path.relpath(ds.builder.path_prefix, self.staging),
                    source=self.source,
                    split=split,
                    documents=ds.documents,
                    tokens=ds.tokens,
                    bytes=ds.bytes,
                    dtype=np.dtype(self.tokenizer.dtype).name,
                    tokenizer=self.tokenizer.fingerprint,
                    fingerprint=fingerprint,
                    index_sha256=index_sha256,
                )
            )
        self.open = {}

    def abort(self) -> None:
        """Close the open builders' files after an error (a full disk fails their flush: closed
        here, it is not reported a second time when they are collected)."""
        for ds in self.open.values():
            try:
                ds.builder.data_file.close()
            except OSError:
                pass
        self.open = {}

    def finish(self) -> tuple[list[DatasetEntry], list[DatasetEntry]]:
        self._close_source()
        return (
            [e for e in self.entries if e.split == "train"],
            [e for e in self.entries if e.split == "eval"],
        )


def _run_tasks(
    tasks, tok_spec, domains, seed, shard_dir, workers, progress, on_next_in_order
) -> dict[int, TaskResult]:
    """Run every task; call ``on_next_in_order(task, result)`` in task order as results arrive."""
    workers = max(1, min(workers or os.cpu_count() or 1, len(tasks)))
    total = sum(_task_size(t) for t in tasks)
    results: dict[int, TaskResult] = {}
    bar = tqdm(
        total=total,
        unit="B",
        unit_scale=True,
        desc="tokenizing",
        file=sys.stderr,
        disable=(not sys.stderr.isatty()) if progress is None else not progress,
    )
    tokens = 0
    next_index = 0

    def done(task: IngestJob, result: TaskResult):
        nonlocal tokens, next_index
        results[task.index] = result
        tokens += sum(c[1] for c in result.counts.values())
        bar.update(_task_size(task))
        bar.set_postfix(tokens=f"{tokens:,}", refresh=False)
        while next_index in results and next_index < len(tasks):
            on_next_in_order(tasks[next_index], results[next_index])
            next_index += 1

    with bar:
        if workers == 1:
            for t in tasks:
                done(t, run_task(t, tok_spec, ".", domains, seed, shard_dir))
        else:
            with worker_pool(workers) as pool:
                futures = {
                    pool.submit(run_task, t, tok_spec, ".", domains, seed, shard_dir): t
                    for t in tasks
                }
                try:
                    for fut in as_completed(futures):
                        done(futures[fut], fut.result())
                except BaseException as exc:
                    if not isinstance(exc, Exception):  # Ctrl-C or SIGTERM: stop now
                        kill_workers(pool)
                    # the first bad row ends the run: queued tasks are dropped, not tokenized
                    pool.shutdown(wait=True, cancel_futures=True)
                    raise
    return results


def _task_size(task: IngestJob) -> int:
    return (
        task.end - task.start if task.fmt != "parquet" else max(1, os.path.getsize(task.path) // 64)
    )


def summary_line(result: PrepareResult) -> str:
    m = result.manifest
    tokens = sum(d.tokens for d in m.datasets)
    held = sum(d.tokens for d in m.eval_datasets)
    return (
        f"{result.state}: {m.path} — {len(m.datasets)} datasets, {tokens:,} training tokens, "
        f"{held:,} held-out tokens, tokenizer {m.tokenizer['fingerprint']}"
    )
