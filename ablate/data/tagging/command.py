"""``ablate data tag CORPORA.yaml --out DIR``: tag the sources that name a tagger, once.

The output (``DIR/<source>/part-NNNNN.jsonl`` + ``DIR/tagged.json``, see ``run``) appears at
``--out`` by one rename from a staging directory beside it, like prepare's. ``ablate data
prepare CORPORA.yaml --tagged DIR`` then reuses the shards of every source tagged from the same
inputs with the same tagger and options, and decides the domains again with the YAML's
thresholds: re-thresholding a density sweep costs a prepare, not a tagging.

``--overwrite`` replaces only an earlier tag output (recognised by its ``tagged.json``), and
deletes only the files it lists.
"""

from __future__ import annotations

import os

from ablate.data import generated
from ablate.data.corpora import load_corpora_spec, resolve_files
from ablate.data.files_corpus import materialize_files
from ablate.data.outdir import make_parents, remove_made_parents, write_errors
from ablate.errors import AblateError, show
from ablate.data.workers import check_workers
from ablate.faults import terminated_as_exception
from ablate.io import remove_path, remove_stale_temporaries, tmp_name


def tag_corpora(
    spec_arg: str,
    out_dir: str,
    workers: int | None = None,
    overwrite: bool = False,
    progress: bool | None = None,
) -> dict:
    """Tag; return the ``tagged.json`` body's sources."""
    from ablate.data.tagging.run import load_tagged, tag_sources, write_tagged_json

    check_workers(workers)
    spec = load_corpora_spec(spec_arg)
    sources = [s for s in spec.sources if s.tagger]
    if not sources:
        raise AblateError(
            f"{spec.origin}: sources: no source names a tagger (add 'tagger: code' or "
            "'tagger: math' to a source)"
        )
    out_dir = os.path.realpath(out_dir)
    files = {s.name: resolve_files(s, spec.base_dir) for s in sources if not s.generated}
    from ablate.data.outdir import check_outside_inputs

    check_outside_inputs(out_dir, spec, files)
    old = _check_out(out_dir, overwrite)
    with terminated_as_exception() as sigterm:
        created = make_parents(out_dir)
        staging = tmp_name(out_dir)
        done = False
        try:
            with write_errors(out_dir, staging):
                remove_stale_temporaries(os.path.dirname(out_dir))
                remove_path(staging)
                os.mkdir(staging)
                raw_dir = os.path.join(staging, ".raw")
                inputs, materialized = {}, set()
                for s in sources:
                    if s.generated:
                        made = generated.materialize(s, raw_dir, spec.seed, spec.base_dir)
                        inputs[s.name] = made.files
                        materialized.add(s.name)
                    elif s.reader == "files":
                        made = materialize_files(s, files[s.name], raw_dir, spec.base_dir)
                        inputs[s.name] = made.files
                        materialized.add(s.name)
                    else:
                        inputs[s.name] = files[s.name]
                tagged = tag_sources(
                    sources,
                    inputs,
                    spec.base_dir,
                    staging,
                    workers,
                    progress,
                    frozenset(materialized),
                )
                remove_path(raw_dir)
                write_tagged_json(staging, tagged)
                if old is not None:
                    # swap by two renames (a reader sees the old shards or the new ones), then
                    # delete only what the old tagged.json lists; a kill in between leaves an
                    # owned temporary that the next run here removes
                    trash = tmp_name(out_dir, "0")
                    remove_path(trash)
                    os.rename(out_dir, trash)
                    os.rename(staging, out_dir)
                    _remove_old(trash, old)
                    os.rmdir(trash)
                else:
                    os.rename(staging, out_dir)
            done = True
            return load_tagged(out_dir)
        finally:
            sigterm.armed = False
            remove_path(staging)
            if not done:
                remove_made_parents(created)


def _check_out(out_dir: str, overwrite: bool) -> dict | None:
    """None when ``out_dir`` is free; the earlier output's records when --overwrite may
    replace it; a refusal otherwise."""
    from ablate.data.tagging.run import load_tagged

    if not os.path.lexists(out_dir):
        return None
    if not os.path.isdir(out_dir):
        raise AblateError(f"{out_dir}: exists and is not a directory")
    if not os.listdir(out_dir):
        os.rmdir(out_dir)
        return None
    if not os.path.isfile(os.path.join(out_dir, "tagged.json")):
        raise AblateError(
            f"{out_dir}: exists, is not empty and holds no tagged.json; refusing to write into "
            "it (--overwrite replaces only an earlier 'ablate data tag' output)"
        )
    if not overwrite:
        raise AblateError(f"{out_dir}: already holds tagged shards; pass --overwrite to replace")
    old = load_tagged(out_dir, where=out_dir)
    own = {"tagged.json"} | {p for rec in old.values() for p in rec["parts"]}
    for d, _, names in os.walk(out_dir):
        for n in names:
            rel = os.path.relpath(os.path.join(d, n), out_dir)
            if rel not in own:
                raise AblateError(
                    f"{out_dir}: --overwrite: {show(rel)} was not written by 'ablate data tag'; "
                    "refusing to delete it (move it away, or choose another --out)"
                )
    return old


def _remove_old(out_dir: str, old: dict) -> None:
    for rec in old.values():
        for p in rec["parts"]:
            os.remove(os.path.join(out_dir, p))
    os.remove(os.path.join(out_dir, "tagged.json"))
    for d, _, _ in os.walk(out_dir, topdown=False):
        if d != out_dir:
            os.rmdir(d)  # emptied: _check_out refused any file tagged.json does not list


def summary_line(out_dir: str, sources: dict) -> str:
    parts = []
    for name, rec in sources.items():
        domains = ", ".join(f"{d} {c['segments']:,}" for d, c in rec["domains"].items())
        skipped = sum(rec["skipped"].values())
        parts.append(
            f"{name}: {rec['documents']:,} documents -> {domains or 'nothing'}"
            + (f" ({skipped:,} skipped)" if skipped else "")
        )
    return f"tagged: {out_dir} — " + "; ".join(parts)
