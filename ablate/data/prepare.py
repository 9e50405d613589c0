"""``ablate data prepare``: corpora spec -> megatron-core indexed datasets + manifest.

1. Generated sources (toy world, stdlib, GSM8K) are first written out as JSONL, so that every
   source enters through the same ingestion path as a user's own files.
2. Every input file is cut into tasks (see ``ingest``); worker processes tokenize tasks into
   shard files.
3. Shards are appended, in task order, to one megatron-core dataset per (source, domain) and one
   held-out dataset per (source, domain).
4. The manifest is written last, and the whole directory appears at ``--out`` by one rename:
   a failed or interrupted run leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
import multiprocessing

import numpy as np
from tqdm import tqdm

from ablate.data import generated
from ablate.data.corpora import CorporaSpec, load_corpora_spec, resolve_files
from ablate.data.indexed import ShardedIndexedDatasetBuilder
from ablate.data.ingest import Task, TaskResult, file_format, run_task, shard_paths, split_file
from ablate.data.manifest import DatasetEntry, Manifest, load_manifest
from ablate.data.tokenizer import HFTokenizer, Tokenizer, load_tokenizer
from ablate.errors import AblateError, DataError


@dataclass
class PrepareResult:
    manifest: Manifest
    state: str  # created | unchanged | replaced


def prepare(spec_arg: str, out_dir: str, workers: int | None = None, overwrite: bool = False,
            progress: bool | None = None) -> PrepareResult:
    spec = load_corpora_spec(spec_arg)
    tokenizer = load_tokenizer(spec.tokenizer, spec.base_dir, where=f"{spec.origin}: tokenizer")
    _check_out_dir(out_dir, spec, tokenizer, overwrite)
    out_dir = os.path.abspath(out_dir)
    os.makedirs(os.path.dirname(out_dir), exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.partial-", dir=os.path.dirname(out_dir))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(staging, 0o777 & ~umask)  # mkdtemp makes it private; the data dir is meant to be shared
    try:
        manifest = _build(spec, tokenizer, staging, workers, progress)
        return _install(staging, out_dir, manifest, overwrite)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _check_out_dir(out_dir: str, spec: CorporaSpec, tokenizer: Tokenizer, overwrite: bool) -> None:
    """Fail before any work when ``out_dir`` clearly holds something else."""
    if not os.path.exists(out_dir) or overwrite:
        return
    if not os.path.isdir(out_dir):
        raise AblateError(f"{out_dir}: exists and is not a directory")
    manifest_path = os.path.join(out_dir, "manifest.json")
    if not os.path.exists(manifest_path):
        if os.listdir(out_dir):
            raise AblateError(f"{out_dir}: exists, is not empty and holds no manifest.json; refusing to write into it")
        return
    old = load_manifest(manifest_path)
    if old.spec != spec.to_dict() or old.tokenizer["fingerprint"] != tokenizer.fingerprint:
        raise AblateError(
            f"{out_dir}: already holds a different dataset (made from another corpora spec or tokenizer); "
            "choose another --out or pass --overwrite"
        )


def _build(spec: CorporaSpec, tokenizer: Tokenizer, staging: str, workers: int | None,
           progress: bool | None) -> Manifest:
    raw_dir = os.path.join(staging, "raw")
    shard_dir = os.path.join(staging, ".shards")
    os.makedirs(shard_dir)
    probes: dict = {}
    tasks: list[Task] = []
    for source in spec.sources:
        if source.generated:
            made = generated.materialize(source, raw_dir, spec.seed, spec.base_dir)
            files = made.files
            for name, info in made.probes.items():
                probes[name] = {**info, "path": os.path.relpath(info["path"], staging)}
        else:
            files = resolve_files(source, spec.base_dir)
        for path in files:
            fmt = file_format(path) or source.reader
            for start, end in split_file(path, fmt):
                tasks.append(Task(len(tasks), source.name, path, fmt, start, end, source.domain,
                                  source.text_field, source.domain_field, source.eval_fraction))

    tok_spec = tokenizer.describe()
    merger = _Merger(staging, shard_dir, tokenizer)
    results = _run_tasks(tasks, tok_spec, tuple(spec.domains), spec.seed, shard_dir, workers, progress,
                         on_next_in_order=merger.add)
    datasets, eval_datasets = merger.finish()
    shutil.rmtree(shard_dir)

    rows_per_file: dict[str, int] = {}
    for task in tasks:
        rows_per_file[task.path] = rows_per_file.get(task.path, 0) + results[task.index].rows
    for path, rows in rows_per_file.items():
        if rows == 0:
            raise DataError(f"{path}: empty file (no rows)")
    inputs = {
        source.name: hashlib.sha256("".join(results[t.index].content_hash for t in tasks
                                            if t.source == source.name).encode()).hexdigest()
        for source in spec.sources
    }

    if isinstance(tokenizer, HFTokenizer):
        # The data directory carries its tokenizer, so training and eval never look elsewhere.
        shutil.copyfile(tokenizer.path, os.path.join(staging, "tokenizer.json"))
        tok_spec = {**tok_spec, "path": "tokenizer.json"}
    manifest = Manifest(tokenizer=tok_spec, seed=spec.seed, domains=list(spec.domains),
                        datasets=datasets, eval_datasets=eval_datasets, probes=probes,
                        spec=spec.to_dict(), inputs=inputs, path=os.path.join(staging, "manifest.json"))
    with open(manifest.path, "w", encoding="utf-8") as f:
        f.write(manifest.to_json())
    return manifest


@dataclass
class _OpenDataset:
    builder: ShardedIndexedDatasetBuilder
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
        self.open: dict[tuple[str, str], _OpenDataset] = {}  # (domain, split) -> its builder and counts
        self.entries: list[DatasetEntry] = []

    def add(self, task: Task, result: TaskResult) -> None:
        if task.source != self.source:
            self._close_source()
            self.source = task.source
        for key, (documents, tokens, nbytes) in result.counts.items():
            if key not in self.open:
                domain, split = key
                prefix = f"{task.source}/{domain}" + (".eval" if split == "eval" else "")
                os.makedirs(os.path.join(self.staging, task.source), exist_ok=True)
                self.open[key] = _OpenDataset(ShardedIndexedDatasetBuilder(os.path.join(self.staging, prefix), self.tokenizer.dtype))
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
            self.entries.append(DatasetEntry(
                domain=domain, prefix=os.path.relpath(ds.builder.path_prefix, self.staging), source=self.source,
                split=split, documents=ds.documents, tokens=ds.tokens, bytes=ds.bytes,
                dtype=np.dtype(self.tokenizer.dtype).name, tokenizer=self.tokenizer.fingerprint,
                fingerprint=fingerprint, index_sha256=index_sha256))
        self.open = {}

    def finish(self) -> tuple[list[DatasetEntry], list[DatasetEntry]]:
        self._close_source()
        return ([e for e in self.entries if e.split == "train"], [e for e in self.entries if e.split == "eval"])


def _run_tasks(tasks, tok_spec, domains, seed, shard_dir, workers, progress, on_next_in_order) -> dict[int, TaskResult]:
    """Run every task; call ``on_next_in_order(task, result)`` in task order as results arrive."""
    workers = max(1, min(workers or os.cpu_count() or 1, len(tasks)))
    total = sum(_task_size(t) for t in tasks)
    results: dict[int, TaskResult] = {}
    bar = tqdm(total=total, unit="B", unit_scale=True, desc="tokenizing", file=sys.stderr,
               disable=(not sys.stderr.isatty()) if progress is None else not progress)
    tokens = 0
    next_index = 0

    def done(task: Task, result: TaskResult):
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
            # spawn, not fork: the parent has torch/megatron loaded, with threads of their own.
            ctx = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
                futures = {pool.submit(run_task, t, tok_spec, ".", domains, seed, shard_dir): t for t in tasks}
                try:
                    for fut in as_completed(futures):
                        done(futures[fut], fut.result())
                except BaseException:
                    # the first bad row ends the run: queued tasks are dropped, not tokenized
                    pool.shutdown(wait=True, cancel_futures=True)
                    raise
    return results


def _task_size(task: Task) -> int:
    return task.end - task.start if task.fmt != "parquet" else max(1, os.path.getsize(task.path) // 64)


def _install(staging: str, out_dir: str, manifest: Manifest, overwrite: bool) -> PrepareResult:
    final_manifest = os.path.join(out_dir, "manifest.json")

    def moved() -> Manifest:
        manifest.path = final_manifest
        return manifest

    if not os.path.exists(out_dir):
        os.rename(staging, out_dir)
        return PrepareResult(moved(), "created")
    if os.path.exists(final_manifest):
        with open(final_manifest, encoding="utf-8") as f:
            if f.read() == manifest.to_json():
                return PrepareResult(load_manifest(final_manifest), "unchanged")
        if not overwrite:
            raise AblateError(f"{out_dir}: already holds a different dataset (its inputs changed); "
                              "choose another --out or pass --overwrite")
        trash = staging + ".old"
        os.rename(out_dir, trash)
        os.rename(staging, out_dir)
        shutil.rmtree(trash, ignore_errors=True)
        return PrepareResult(moved(), "replaced")
    if os.listdir(out_dir) and not overwrite:
        raise AblateError(f"{out_dir}: exists, is not empty and holds no manifest.json; refusing to write into it")
    shutil.rmtree(out_dir)
    os.rename(staging, out_dir)
    return PrepareResult(moved(), "created")


def summary_line(result: PrepareResult) -> str:
    m = result.manifest
    tokens = sum(d.tokens for d in m.datasets)
    held = sum(d.tokens for d in m.eval_datasets)
    return (f"{result.state}: {m.path} — {len(m.datasets)} datasets, {tokens:,} training tokens, "
            f"{held:,} held-out tokens, tokenizer {m.tokenizer['fingerprint']}")

