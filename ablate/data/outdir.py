"""Where ``ablate data prepare`` writes: the rules for ``--out``, so that nothing is lost.

- ``--out`` must not equal, contain or lie inside an input (symlinks resolved): ``--overwrite``
  would delete it, and a rerun would read the output back as corpus (``check_outside_inputs``).
- An existing ``--out`` is written over only when it is empty or holds a previous prepare's
  output, recognised by its manifest; ``--overwrite`` then deletes only the files that manifest
  names (``own_files``: datasets, probes, raw rows of generated sources, tokenizer, manifest),
  and any other file there is a refusal naming it (``check_out_dir``, again in ``install``).
- The new output replaces the old one by two renames (``install``); a kill in between leaves
  owned temporaries that the next prepare into the same parent removes.
- A full disk, a read-only file system or a missing permission is one line naming ``--out``
  (``write_errors``), and parents created for ``--out`` are removed again when prepare fails.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager

from ablate.data import generated
from ablate.data.corpora import CorporaSpec, Source
from ablate.data.manifest import Manifest, load_manifest
from ablate.data.tokenizer import Tokenizer
from ablate.errors import AblateError, show
from ablate.io import OS_REASONS, os_error_line, remove_path, tmp_name


@contextmanager
def write_errors(out_dir: str, staging: str):
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


def make_parents(out_dir: str) -> list[str]:
    """Create the missing parents of ``out_dir``; return them, deepest first (removed again if
    prepare fails, so a refusal leaves no empty directories behind)."""
    missing, d = [], os.path.dirname(out_dir)
    while not os.path.isdir(d):
        if os.path.lexists(d):
            raise AblateError(f"{d}: not a directory (it is on the path of --out {out_dir})")
        missing.append(d)
        d = os.path.dirname(d)
    made = []
    try:
        with write_errors(out_dir, ""):
            for d in reversed(missing):
                os.mkdir(d)
                made.insert(0, d)
    except BaseException:
        remove_made_parents(made)
        raise
    return missing


def remove_made_parents(made: list[str]) -> None:
    """Remove the directories ``make_parents`` made, deepest first, while they are empty."""
    for d in made:
        try:
            os.rmdir(d)
        except OSError:
            break


def _source_root(source: Source, base_dir: str) -> str:
    """The directory or file a source reads: its path up to the first glob component."""
    parts = []
    for part in source.path.replace(os.sep, "/").split("/"):
        if any(c in part for c in "*?["):
            break
        parts.append(part)
    return os.path.realpath(os.path.join(base_dir, *parts) if parts else base_dir)


def check_outside_inputs(out_dir: str, spec: CorporaSpec, files: dict) -> None:
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


def own_files(out_dir: str, manifest: Manifest) -> set[str]:
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
            and (source.get("reader") in generated.MATERIALIZERS or source.get("reader") == "files")
        ):
            own.add(generated.raw_file(source["name"]))
    for record in manifest.tagging.values():  # tagged shards kept as the record of the tagging
        parts = record.get("parts") if isinstance(record, dict) else None
        own.update(p for p in parts or [] if isinstance(p, str))
    return {os.path.normpath(p) for p in own}


def foreign_files(out_dir: str, manifest: Manifest) -> list[str]:
    """Everything under ``out_dir`` that is not one of ``_own_files`` (directories aside)."""
    own = own_files(out_dir, manifest)
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


def check_out_dir(out_dir: str, spec: CorporaSpec, tokenizer: Tokenizer, overwrite: bool) -> None:
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
        foreign = foreign_files(out_dir, old)
        if foreign:
            _refuse_foreign(out_dir, foreign)
        return
    if old.spec != spec.to_dict() or old.tokenizer["fingerprint"] != tokenizer.fingerprint:
        raise AblateError(
            f"{out_dir}: already holds a different dataset (made from another corpora spec or "
            "tokenizer); choose another --out or pass --overwrite"
        )


def install(
    staging: str, out_dir: str, manifest: Manifest, overwrite: bool
) -> tuple[Manifest, str]:
    """Put ``staging`` at ``out_dir``; returns the manifest there and created | unchanged |
    replaced."""
    final_manifest = os.path.join(out_dir, "manifest.json")

    def moved() -> Manifest:
        manifest.path = final_manifest
        return manifest

    if not os.path.lexists(out_dir):
        os.rename(staging, out_dir)
        return moved(), "created"
    if os.path.isfile(final_manifest):
        with open(final_manifest, encoding="utf-8") as f:
            if f.read() == manifest.to_json():
                return load_manifest(final_manifest), "unchanged"
        if not overwrite:
            raise AblateError(
                f"{out_dir}: already holds a different dataset (its inputs changed); "
                "choose another --out or pass --overwrite"
            )
        old = load_manifest(final_manifest)
        foreign = foreign_files(out_dir, old)  # again: the directory may have changed meanwhile
        if foreign:
            _refuse_foreign(out_dir, foreign)
        # Swap by two renames (readers see the old or the new dataset), then delete only what
        # the old manifest names. A kill in between leaves two owned temporaries, which the
        # next prepare here removes.
        trash = tmp_name(out_dir, "0")
        remove_path(trash)  # only a dead run whose pid was ours can have left one
        os.rename(out_dir, trash)
        os.rename(staging, out_dir)
        _remove_own(trash, old)
        return moved(), "replaced"
    if os.listdir(out_dir):
        raise AblateError(
            f"{out_dir}: exists, is not empty and holds no manifest.json; refusing to write into it"
        )
    os.rename(staging, out_dir)  # replaces the empty directory in one step
    return moved(), "created"


def _remove_own(trash: str, old: Manifest) -> None:
    """Delete the old dataset's own files, then its emptied directories. A file that appeared
    in the moment between the check and the swap is kept, under a name that is not a
    temporary (stale temporaries are deleted whole), and named on stderr."""
    for rel in sorted(own_files(trash, old)):
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
