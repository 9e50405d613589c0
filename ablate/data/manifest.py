"""The manifest: the one file downstream stages trust about a prepared data directory.

``DIR/manifest.json``::

    {
      "format": "ablate.manifest/1",
      "tokenizer": {"kind": "byte", "fingerprint": "byte-v1", "vocab_size": 258, "eod": 256, ...},
      "seed": 1234,
      "domains": [],                      # tags declared beyond the built-in taxonomy
      "datasets":      [ENTRY, ...],      # training data, one per (source, domain)
      "eval_datasets": [ENTRY, ...],      # held-out documents of the same (source, domain)
      "probes": {"math_answer": {"path": "probes/math_answer.jsonl", "count": 200}, ...},
      "spec": {...},                      # the normalized corpora spec it was made from
      "inputs": {"<source>": "<sha256 of the raw input>", ...},
      "tagging": {"<source>": {"tagger": {name, version, options}, "thresholds", "parts",
                  "documents", "segments", "skipped", "domains", "inputs_sha256"}},  # if any
      "decontamination": {"enabled", "ngram", "action", "missing", "against": {sets...},
                          "sources": {"<source>": {"documents", "contaminated", "dropped",
                                                   "by_eval_set"}}}
    }

    ENTRY = {"domain", "prefix" (relative to DIR), "source", "split", "documents", "tokens",
             "bytes" (UTF-8 bytes of the text, for bits-per-byte), "dtype",
             "tokenizer" (fingerprint), "fingerprint" (content of .bin + .idx),
             "index_sha256" (the .idx alone)[, "provenance": {tagger, thresholds}]}

The manifest holds no timestamps or host names: the same input gives a byte-identical file.
``load_manifest`` checks every field above (type, range, paths that stay inside DIR), so a
damaged or hand-edited manifest is one line naming the field, never a traceback downstream.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field

from ablate.data.taxonomy import Taxonomy
from ablate.errors import AblateError, show

FORMAT = "ablate.manifest/1"


@dataclass
class DatasetEntry:
    domain: str
    prefix: str
    source: str
    split: str
    documents: int
    tokens: int
    bytes: int
    dtype: str
    tokenizer: str
    fingerprint: str
    index_sha256: str  # of the .idx alone: a quick check that scales to any corpus size
    # a tagged source's datasets: the tagger (name, version, options) and thresholds that
    # decided their domain (absent otherwise)
    provenance: dict = field(default_factory=dict)


@dataclass
class Manifest:
    tokenizer: dict
    seed: int
    domains: list[str]
    datasets: list[DatasetEntry]
    eval_datasets: list[DatasetEntry]
    probes: dict = field(default_factory=dict)
    spec: dict = field(default_factory=dict)
    inputs: dict = field(default_factory=dict)
    tagging: dict = field(default_factory=dict)  # tagged source -> tagger, thresholds, counts
    decontamination: dict = field(default_factory=dict)  # eval sets, counts per source
    path: str = ""  # where it was loaded from (not serialized)

    @property
    def root(self) -> str:
        return os.path.dirname(os.path.abspath(self.path))

    @property
    def taxonomy(self) -> Taxonomy:
        return Taxonomy(self.domains)

    def abs_prefix(self, entry: DatasetEntry) -> str:
        return os.path.join(self.root, entry.prefix)

    def to_json(self) -> str:
        body = {
            "format": FORMAT,
            "tokenizer": self.tokenizer,
            "seed": self.seed,
            "domains": self.domains,
            "datasets": [_entry_dict(d) for d in self.datasets],
            "eval_datasets": [_entry_dict(d) for d in self.eval_datasets],
            "probes": self.probes,
            "spec": self.spec,
            "inputs": self.inputs,
        }
        if self.tagging:
            body["tagging"] = self.tagging
        if self.decontamination:
            body["decontamination"] = self.decontamination
        return json.dumps(body, indent=2, sort_keys=False) + "\n"

    def verify(
        self, full: bool = True, entries: list[DatasetEntry] | None = None, memo: dict | None = None
    ) -> None:
        """Raise if a dataset's files are missing or no longer match the manifest.

        ``full`` re-hashes every byte against the content fingerprint; otherwise the check is
        the ``.bin`` size and the ``.idx`` hash (which holds every document length), cheap at
        any scale: what compile and training do before trusting the files. ``memo`` maps an
        ``.idx`` path to ``[size, mtime_ns, inode, sha256]`` of its last hash, so an unchanged
        file is not read again (the caller persists it).
        """
        import numpy as np

        from ablate.data.indexed import content_fingerprint

        for entry in self.datasets + self.eval_datasets if entries is None else entries:
            prefix = self.abs_prefix(entry)
            for ext in (".bin", ".idx"):
                if not os.path.isfile(prefix + ext):
                    raise AblateError(
                        f"{self.path}: dataset {entry.prefix!r}: "
                        f"file {entry.prefix + ext} is missing"
                    )
            size = os.path.getsize(prefix + ".bin")
            if (
                size != entry.tokens * np.dtype(entry.dtype).itemsize
                or _idx_sha256(prefix + ".idx", memo) != entry.index_sha256
            ):
                raise AblateError(
                    f"{self.path}: dataset {entry.prefix!r}: files no longer match the manifest "
                    f"(fingerprint {entry.fingerprint}; re-run 'ablate data prepare')"
                )
            if full and content_fingerprint(prefix) != entry.fingerprint:
                raise AblateError(
                    f"{self.path}: dataset {entry.prefix!r}: files no longer match their "
                    f"fingerprint {entry.fingerprint} (re-run 'ablate data prepare')"
                )


def _entry_dict(entry: DatasetEntry) -> dict:
    body = asdict(entry)
    if not body["provenance"]:
        del body["provenance"]  # untagged datasets read as they always did
    return body


def verify_datasets(pairs, memo: dict | None = None, threads: int = 2) -> None:
    """``Manifest.verify(full=False)`` of each (manifest, entry) pair, in order (the first that
    fails is the one reported), with the ``.idx`` files ``memo`` does not hold hashed on
    ``threads`` threads first: file reads and hashlib release the GIL, and a first compile over
    a large corpus hashes gigabytes of them (~16 GB at 512 datasets and 1T tokens)."""
    from concurrent.futures import ThreadPoolExecutor

    memo = {} if memo is None else memo
    paths = sorted(p for p in {m.abs_prefix(d) + ".idx" for m, d in pairs} if _memo_stale(p, memo))

    def hash_one(path: str) -> None:
        try:
            _idx_sha256(path, memo)  # each path its own memo key: no two threads write one
        except OSError:
            pass  # a missing or unreadable file: verify reports it below, in order

    if threads > 1 and len(paths) > 1:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            list(pool.map(hash_one, paths))
    for m, d in pairs:
        m.verify(full=False, entries=[d], memo=memo)


def _stamp(path: str) -> list:
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def _memo_stale(path: str, memo: dict) -> bool:
    """Would ``_idx_sha256`` read the file (no memo entry for this version of it)?"""
    try:
        return memo.get(os.path.abspath(path), [None])[:3] != _stamp(path)
    except OSError:
        return False  # missing: nothing to hash; verify reports it


def _idx_sha256(path: str, memo: dict | None) -> str:
    from ablate.data.indexed import file_sha256

    stamp = _stamp(path)
    key = os.path.abspath(path)
    if memo is not None and memo.get(key, [None])[:3] == stamp:
        return memo[key][3]
    sha = file_sha256(path)
    if memo is not None:
        memo[key] = stamp + [sha]
    return sha


def load_manifest(path: str) -> Manifest:
    """Read and check ``DIR/manifest.json`` (or ``DIR``): anything missing, mistyped or out of
    place is one line naming the file and the field (compile and training trust what passes)."""
    if os.path.isdir(path):
        path = os.path.join(path, "manifest.json")
    if not os.path.isfile(path):
        raise AblateError(
            f"{path}: manifest not found (write one with 'ablate data prepare SPEC --out DIR')"
        )
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise AblateError(
            f"{path}: damaged manifest, not valid JSON ({str(exc)[:80]}); "
            "re-run 'ablate data prepare'"
        ) from None
    except OSError as exc:
        raise AblateError(
            f"{path}: cannot read the manifest ({(exc.strerror or str(exc)).lower()})"
        ) from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        got = show(raw.get("format")) if isinstance(raw, dict) else f"a JSON {type(raw).__name__}"
        raise AblateError(
            f"{path}: format: not an ablate manifest (expected {FORMAT!r}, got {got})"
        )
    _check_manifest(path, raw)
    taxonomy = Taxonomy(raw["domains"], where=f"{path}: domains")
    entries = {}
    for key in ("datasets", "eval_datasets"):
        entries[key] = [
            DatasetEntry(**{f: e[f] for f in _ENTRY_FIELDS + _ENTRY_OPTIONAL if f in e})
            for e in raw[key]
        ]
        for i, e in enumerate(entries[key]):
            taxonomy.validate(e.domain, f"{path}: {key}[{i}].domain")
            if e.tokenizer != raw["tokenizer"]["fingerprint"]:
                raise AblateError(
                    f"{path}: {key}[{i}].tokenizer: made with tokenizer {show(e.tokenizer)}, "
                    f"the manifest's is {show(raw['tokenizer']['fingerprint'])}"
                )
    return Manifest(
        tokenizer=raw["tokenizer"],
        seed=raw["seed"],
        domains=raw["domains"],
        datasets=entries["datasets"],
        eval_datasets=entries["eval_datasets"],
        probes=raw["probes"],
        spec=raw["spec"],
        inputs=raw["inputs"],
        tagging=raw["tagging"],
        decontamination=raw["decontamination"],
        path=path,
    )


_ENTRY_OPTIONAL = ("provenance",)
_ENTRY_FIELDS = tuple(f for f in DatasetEntry.__dataclass_fields__ if f not in _ENTRY_OPTIONAL)
_ENTRY_COUNTS = ("documents", "tokens", "bytes")
_DTYPES = ("uint16", "int32")  # what ``tokenizer.token_dtype`` writes


def _check_manifest(path: str, raw: dict) -> None:
    """Every field ``Manifest`` and its readers use, with its type and range."""

    def fail(field: str, what: str) -> None:
        raise AblateError(f"{path}: {field}: {what}")

    def need(body: dict, key: str, where: str):
        if key not in body:
            fail(where + key, "missing (re-run 'ablate data prepare')")
        return body[key]

    def integer(value, where: str, low: int = 0) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            fail(where, f"{show(value)} must be an integer >= {low}")

    tok = need(raw, "tokenizer", "")
    if not isinstance(tok, dict):
        fail("tokenizer", f"{show(tok)} must be a mapping")
    if need(tok, "kind", "tokenizer.") not in ("byte", "hf"):
        fail("tokenizer.kind", f"{show(tok['kind'])} is not a tokenizer kind (allowed: byte, hf)")
    if not isinstance(need(tok, "fingerprint", "tokenizer."), str):
        fail("tokenizer.fingerprint", f"{show(tok['fingerprint'])} must be a string")
    integer(need(tok, "vocab_size", "tokenizer."), "tokenizer.vocab_size", low=1)
    for key in ("eod", "pad"):
        integer(need(tok, key, "tokenizer."), f"tokenizer.{key}")
        if tok[key] >= tok["vocab_size"]:
            fail(f"tokenizer.{key}", f"{tok[key]} is not below vocab_size {tok['vocab_size']}")
    if tok["kind"] == "hf":
        _relative(need(tok, "path", "tokenizer."), "tokenizer.path", fail)
    seed = need(raw, "seed", "")
    if isinstance(seed, bool) or not isinstance(seed, int):
        fail("seed", f"{show(seed)} must be an integer")
    domains = raw.setdefault("domains", [])
    if not isinstance(domains, list):
        fail("domains", f"{show(domains)} must be a list of domain tags")
    for key in ("probes", "spec", "inputs", "tagging", "decontamination"):
        if not isinstance(raw.setdefault(key, {}), dict):
            fail(key, f"{show(raw[key])} must be a mapping")
    for name, record in raw["tagging"].items():
        parts = record.get("parts", []) if isinstance(record, dict) else None
        if not isinstance(parts, list):
            fail(f"tagging.{name}.parts", f"{show(parts)} must be a list of files")
        for i, part in enumerate(parts):
            _relative(part, f"tagging.{name}.parts[{i}]", fail)  # --overwrite deletes them
    for name, probe in raw["probes"].items():
        if not isinstance(probe, dict):
            fail(f"probes.{name}", f"{show(probe)} must be a mapping with path and count")
        _relative(need(probe, "path", f"probes.{name}."), f"probes.{name}.path", fail)
        integer(need(probe, "count", f"probes.{name}."), f"probes.{name}.count")
    for key in ("datasets", "eval_datasets"):
        entries = need(raw, key, "")
        if not isinstance(entries, list):
            fail(key, f"{show(entries)} must be a list of datasets")
        for i, e in enumerate(entries):
            where = f"{key}[{i}]"
            if not isinstance(e, dict):
                fail(where, f"{show(e)} must be a mapping")
            for f in _ENTRY_FIELDS:
                value = need(e, f, where + ".")
                if f in _ENTRY_COUNTS:
                    integer(value, f"{where}.{f}")
                elif not isinstance(value, str):
                    fail(f"{where}.{f}", f"{show(value)} must be a string")
            if not isinstance(e.setdefault("provenance", {}), dict):
                fail(f"{where}.provenance", f"{show(e['provenance'])} must be a mapping")
            if e["dtype"] not in _DTYPES:
                fail(
                    f"{where}.dtype",
                    f"{show(e['dtype'])} is not a token dtype (allowed: {', '.join(_DTYPES)})",
                )
            if e["split"] != ("train" if key == "datasets" else "eval"):
                fail(f"{where}.split", f"{show(e['split'])} does not belong in {key}")
            _relative(e["prefix"], f"{where}.prefix", fail)


def _relative(value, where: str, fail) -> None:
    """A path inside the data directory: relative, and not climbing out of it."""
    if not isinstance(value, str) or not value:
        fail(where, f"{show(value)} must be a path relative to the data directory")
    if os.path.isabs(value) or ".." in value.replace("\\", "/").split("/"):
        fail(where, f"{show(value)} must stay inside the data directory (relative, no '..')")


def load_manifests(paths: list[str], where: str = "manifests") -> list[Manifest]:
    """Load several manifests that will be used together; they must share one tokenizer."""
    for i, p in enumerate(paths):
        if not os.path.exists(p):
            raise AblateError(
                f"{where}[{i}]: {p} not found (write it with 'ablate data prepare SPEC --out DIR')"
            )
    manifests = [load_manifest(p) for p in paths]
    first = manifests[0]
    for m in manifests[1:]:
        if m.tokenizer["fingerprint"] != first.tokenizer["fingerprint"]:
            raise AblateError(
                f"{m.path}: made with tokenizer {m.tokenizer['fingerprint']}, but {first.path} "
                f"with {first.tokenizer['fingerprint']}: datasets from different tokenizers "
                "cannot be mixed"
            )
    return manifests
