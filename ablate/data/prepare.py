"""``ablate data prepare``: corpora spec -> megatron-core indexed datasets + manifest.

1. Generated sources (toy world, stdlib, GSM8K) are first written out as JSONL, so that every
   source enters through the same ingestion path as a user's own files.
2. Every input file is cut into tasks (see ``ingest``); worker processes tokenize tasks into
   shard files.
3. Shards are appended, in task order, to one megatron-core dataset per (source, domain) and one
   held-out dataset per (source, domain).
4. The manifest is written last, and the whole directory appears at ``--out`` by one rename.

What it promises (nothing lost, nothing left behind):

- ``--out`` is refused when it equals, contains or lies inside an input (symlinks resolved), so
  no run can write over, or later read back, its own corpus.
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
import os
import shutil
import signal
import sys
import threading
from concurrent.futures import as_completed
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from ablate.data import generated
from ablate.data.corpora import CorporaSpec, Source, load_corpora_spec, resolve_files
from ablate.data.indexed import sharded_builder
from ablate.data.ingest import IngestJob, TaskResult, file_format, run_task, shard_paths, split_file
from ablate.data.manifest import DatasetEntry, Manifest, load_manifest
from ablate.data.tokenizer import HFTokenizer, Tokenizer, load_tokenizer
from ablate.data.workers import kill_workers, worker_pool
from ablate.errors import AblateError, DataError, show
from ablate.io import OS_REASONS, os_error_line, remove_path, remove_stale_temporaries, tmp_name


@dataclass
class PrepareResult:
    manifest: Manifest
    state: str  # created | unchanged | replaced


class Terminated(KeyboardInterrupt):
    """SIGTERM while preparing: unwinds like Ctrl-C, so the staging directory is removed."""


def prepare(
    spec_arg: str,
    out_dir: str,
    workers: int | None = None,
    overwrite: bool = False,
    progress: bool | None = None,
) -> PrepareResult:
    if workers is not None and (
        isinstance(workers, bool) or not isinstance(workers, int) or workers < 1
    ):
        raise AblateError(f"--workers: must be >= 1 (got {show(workers)})")
    spec = load_corpora_spec(spec_arg)
    tokenizer = load_tokenizer(spec.tokenizer, spec.base_dir, where=f"{spec.origin}: tokenizer")
    out_dir = os.path.realpath(out_dir)  # a symlinked --out is written where it points
    files = {s.name: resolve_files(s, spec.base_dir) for s in spec.sources if not s.generated}
    _check_outside_inputs(out_dir, spec, files)
    _check_out_dir(out_dir, spec, tokenizer, overwrite)
    with _sigterm_interrupts() as sigterm:
        created = _make_parents(out_dir)
        staging = tmp_name(out_dir)
        done = False
        try:
            with _write_errors(out_dir, staging):
                remove_stale_temporaries(os.path.dirname(out_dir))
                os.mkdir(staging)  # 0o777 & ~umask: the data directory is meant to be shared
                manifest = _build(spec, tokenizer, staging, files, workers, progress)
                result = _install(staging, out_dir, manifest, overwrite)
            done = True
            return result
        finally:
            sigterm.armed = False  # a second SIGTERM must not cut the cleanup short
            remove_path(staging)
            if not done:
                for d in created:  # deepest first; a directory someone else filled stays
                    try:
                        os.rmdir(d)
                    except OSError:
                        break


@contextmanager
def _sigterm_interrupts():
    """While the block runs (in the main thread), SIGTERM raises ``Terminated`` once."""

    class Handler:
        armed = True

        def __call__(self, signum, frame):
            if self.armed:
                self.armed = False
                raise Terminated("terminated (SIGTERM); the partial output was removed")

    handler = Handler()
    if threading.current_thread() is not threading.main_thread():
        yield handler
        return
    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield handler
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def _write_errors(out_dir: str, staging: str):
    """A full disk, a read-only file system or a missing permission: one line naming ``--out``
    (or the file outside the staging directory that could not be written)."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in OS_REASONS:
            raise
        name = exc.filename if isinstance(exc.filename, str) else ""
        if not name or name == staging or name.startswith(staging + os.sep):
            exc = OSError(exc.errno, exc.strerror)  # the staging name means nothing to the user
        raise AblateError(os_error_line(out_dir, exc)) from None


def _make_parents(out_dir: str) -> list[str]:
    """Create the missing parents of ``out_dir``; return them, deepest first (removed again if
    prepare fails, so a refusal leaves no empty directories behind)."""
    missing, d = [], os.path.dirname(out_dir)
    while not os.path.isdir(d):
        if os.path.lexists(d):
            raise AblateError(f"{d}: not a directory (it is on the path of --out {out_dir})")
        missing.append(d)
        d = os.path.dirname(d)
    with _write_errors(out_dir, ""):
        for d in reversed(missing):
            os.mkdir(d)
    return missing


def _source_root(source: Source, base_dir: str) -> str:
    """The directory or file a source reads: its path up to the first glob component."""
    parts = []
    for part in source.path.replace(os.sep, "/").split("/"):
        if any(c in part for c in "*?["):
            break
        parts.append(part)
    return os.path.realpath(os.path.join(base_dir, *parts) if parts else base_dir)


def _check_outside_inputs(out_dir: str, spec: CorporaSpec, files: dict) -> None:
    """``--out`` must not equal, contain or lie inside an input: ``--overwrite`` would delete
    it, and a rerun would read the output back as corpus."""

    def relation(inp: str) -> str | None:
        if inp == out_dir:
            return "is the --out directory"
        if out_dir.startswith(inp.rstrip(os.sep) + os.sep):
            return "contains --out"
        if inp.startswith(out_dir.rstrip(os.sep) + os.sep):
            return "is inside --out"
        return None

    for source in spec.sources:
        if source.path is None or source.generated:  # gsm8k reads named files, not all below
            continue
        named = [(_source_root(source, spec.base_dir), source.path)]
        named += [(os.path.realpath(f), f) for f in files.get(source.name, [])]
        for inp, shown in named:
            rel = relation(inp)
            if rel:
                raise AblateError(
                    f"{source.where}.path: {show(shown)} {rel} {out_dir} (the output "
                    "must be outside every input; choose another --out)"
                )


def _own_files(out_dir: str, manifest: Manifest) -> set[str]:
    """The files (relative to ``out_dir``) a prepare that wrote ``manifest`` put there."""
    own = {"manifest.json"}
    if isinstance(manifest.tokenizer.get("path"), str):
        own.add(manifest.tokenizer["path"])
    for entry in manifest.datasets + manifest.eval_datasets:
        own.update((entry.prefix + ".bin", entry.prefix + ".idx"))
    own.update(probe["path"] for probe in manifest.probes.values())
    for source in manifest.spec.get("sources") or []:
        if (
            isinstance(source, dict)
            and isinstance(source.get("name"), str)
            and source.get("reader") in generated.MATERIALIZERS
        ):
            own.add(generated.raw_file(source["name"]))
    return {os.path.normpath(p) for p in own}


def _foreign_files(out_dir: str, manifest: Manifest) -> list[str]:
    """Everything under ``out_dir`` that is not one of ``_own_files`` (directories aside)."""
    own = _own_files(out_dir, manifest)
    foreign = []
    for d, dirs, names in os.walk(out_dir):
        dirs.sort()
        for name in sorted(names) + [n for n in dirs if os.path.islink(os.path.join(d, n))]:
            rel = os.path.relpath(os.path.join(d, name), out_dir)
            if rel not in own:
                foreign.append(rel)
    return foreign


def _refuse_foreign(out_dir: str, foreign: list[str]) -> None:
    more = f" (and {len(foreign) - 1} more)" if len(foreign) > 1 else ""
    raise AblateError(
        f"{out_dir}: --overwrite: {show(foreign[0])}{more} was not written by "
        "'ablate data prepare'; refusing to delete it (move it away, or choose "
        "another --out)"
    )


def _check_out_dir(out_dir: str, spec: CorporaSpec, tokenizer: Tokenizer, overwrite: bool) -> None:
    """Fail before any work when ``out_dir`` holds something prepare may not replace."""
    if not os.path.lexists(out_dir):
        return
    if not os.path.isdir(out_dir):
        raise AblateError(f"{out_dir}: exists and is not a directory")
    try:
        names = sorted(os.listdir(out_dir))
    except OSError as exc:
        raise AblateError(f"{out_dir}: cannot list it ({(exc.strerror or '').lower()})") from None
    if not names:
        return
    manifest_path = os.path.join(out_dir, "manifest.json")
    if not os.path.isfile(manifest_path):
        raise AblateError(
            f"{out_dir}: exists, is not empty and holds no manifest.json (it holds "
            f"{show(names[0])}); refusing to write into it (--overwrite replaces "
            "only a previous 'ablate data prepare' output)"
        )
    try:
        old = load_manifest(manifest_path)
    except AblateError as exc:
        raise AblateError(f"{exc} (so {out_dir} is not replaced; remove it yourself)") from None
    if overwrite:
        foreign = _foreign_files(out_dir, old)
        if foreign:
            _refuse_foreign(out_dir, foreign)
        return
    if old.spec != spec.to_dict() or old.tokenizer["fingerprint"] != tokenizer.fingerprint:
        raise AblateError(
            f"{out_dir}: already holds a different dataset (made from another corpora spec or "
            "tokenizer); choose another --out or pass --overwrite"
        )


def _build(
    spec: CorporaSpec,
    tokenizer: Tokenizer,
    staging: str,
    source_files: dict,
    workers: int | None,
    progress: bool | None,
) -> Manifest:
    raw_dir = os.path.join(staging, "raw")
    shard_dir = os.path.join(staging, ".shards")
    os.makedirs(shard_dir)
    probes: dict = {}
    tasks: list[IngestJob] = []
    for source in spec.sources:
        if source.generated:
            made = generated.materialize(source, raw_dir, spec.seed, spec.base_dir)
            files = made.files
            for name, info in made.probes.items():
                probes[name] = {**info, "path": os.path.relpath(info["path"], staging)}
        else:
            files = source_files[source.name]
        for path in files:
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
                        source.domain,
                        source.text_field,
                        source.domain_field,
                        source.eval_fraction,
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
        path=os.path.join(staging, "manifest.json"),
    )
    with open(manifest.path, "w", encoding="utf-8") as f:
        f.write(manifest.to_json())
    return manifest


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


def _install(staging: str, out_dir: str, manifest: Manifest, overwrite: bool) -> PrepareResult:
    final_manifest = os.path.join(out_dir, "manifest.json")

    def moved() -> Manifest:
        manifest.path = final_manifest
        return manifest

    if not os.path.lexists(out_dir):
        os.rename(staging, out_dir)
        return PrepareResult(moved(), "created")
    if os.path.isfile(final_manifest):
        with open(final_manifest, encoding="utf-8") as f:
            if f.read() == manifest.to_json():
                return PrepareResult(load_manifest(final_manifest), "unchanged")
        if not overwrite:
            raise AblateError(
                f"{out_dir}: already holds a different dataset (its inputs changed); "
                "choose another --out or pass --overwrite"
            )
        old = load_manifest(final_manifest)
        foreign = _foreign_files(out_dir, old)  # again: the directory may have changed meanwhile
        if foreign:
            _refuse_foreign(out_dir, foreign)
        # Swap by two renames (readers see the old or the new dataset), then delete only what
        # the old manifest names. A kill in between leaves two owned temporaries, which the
        # next prepare here removes.
        trash = tmp_name(out_dir, "0")
        os.rename(out_dir, trash)
        os.rename(staging, out_dir)
        _remove_own(trash, old)
        return PrepareResult(moved(), "replaced")
    if os.listdir(out_dir):
        raise AblateError(
            f"{out_dir}: exists, is not empty and holds no manifest.json; refusing to write into it"
        )
    os.rename(staging, out_dir)  # replaces the empty directory in one step
    return PrepareResult(moved(), "created")


def _remove_own(trash: str, old: Manifest) -> None:
    """Delete the old dataset's own files, then its emptied directories. A file that appeared
    in the moment between the check and the swap is kept, under a name that is not a
    temporary (stale temporaries are deleted whole), and named on stderr."""
    for rel in sorted(_own_files(trash, old)):
        path = os.path.join(trash, rel)
        if os.path.isfile(path) or os.path.islink(path):
            os.remove(path)
    for d, _, _ in os.walk(trash, topdown=False):  # children before their parents
        try:
            os.rmdir(d)
        except OSError:
            pass
    if os.path.lexists(trash):
        kept = trash.rsplit(".tmp-", 1)[0] + f".kept-{os.getpid()}"
        os.rename(trash, kept)
        print(
            f"warning: {kept}: files that appeared in the old output during --overwrite were "
            "kept here",
            file=sys.stderr,
        )


def summary_line(result: PrepareResult) -> str:
    m = result.manifest
    tokens = sum(d.tokens for d in m.datasets)
    held = sum(d.tokens for d in m.eval_datasets)
    return (
        f"{result.state}: {m.path} — {len(m.datasets)} datasets, {tokens:,} training tokens, "
        f"{held:,} held-out tokens, tokenizer {m.tokenizer['fingerprint']}"
    )
