"""The corpora spec: which files become which domain-tagged datasets.

```yaml
tokenizer: byte                 # or path/to/tokenizer.json, or {kind: hf, path: ..., eod_token}
seed: 1234                      # decides the held-out split (a hash of seed, source and text)
eval_fraction: 0.01             # default share of documents held out per source
domains: [science.physics]      # tags beyond the built-in taxonomy (optional)
sources:
  - path: web/*.jsonl           # a file, a directory (all .jsonl/.json/.parquet below it) or a glob
    domain: general             # optional: else every row carries its own 'domain'
    name: web                   # optional: default from the path
    text_field: text            # optional
    domain_field: domain        # optional
    eval_fraction: 0.02         # optional
  - reader: stdlib              # generated corpora: stdlib | gsm8k | toyworld
  - reader: gsm8k
    path: ../shared/benchmarks/gsm8k
  - reader: toyworld
    options: {documents_per_domain: 20000}
  - path: code-dump/                # untagged real data: a tagger decides each document's domain
    reader: files                   # every file below is one document (.py, .ipynb, .md, ...)
    tagger: code                    # code | math (ablate.data.tagging.registry)
    tagger_options: {segment: cells}
    thresholds: {prose_ratio: 0.2}  # re-decides the domain from stored scores, no re-tagging
    on_invalid: skip                # a document the tagger cannot read: skip and count it
decontaminate:                      # default: against every eval set the project scores
  against: [gsm8k, math500, humaneval, mbpp]   # names, lm_eval:<task>, or files
  ngram: 13
  action: drop                      # drop | keep (count only)
  lm_eval_include: tasks/           # where local lm-eval task YAMLs are (for lm_eval:<task>)
```

``decontaminate: false`` turns decontamination off. Without the key, documents are checked
against the built-in eval sets that can be found (the files ``ablate eval`` scores); the
manifest records which ones and how many documents each caught.

Relative paths are relative to the YAML file. The built-in name ``toyworld`` stands for a spec
with one ``toyworld`` source and the byte tokenizer.
"""

from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass, field

from ablate.data.taxonomy import Taxonomy
from ablate.errors import AblateError, show
from ablate.validate import (
    INT64_MAX,
    check_fraction,
    check_keys,
    check_names,
    check_number,
    check_choice,
    check_type,
    load_yaml_file,
)

GENERATED_READERS = ("stdlib", "gsm8k", "toyworld", "mbpp", "hendrycks_math")
FILE_READERS = ("jsonl", "parquet", "files")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_SOURCE_KEYS = (
    "path",
    "name",
    "domain",
    "reader",
    "text_field",
    "domain_field",
    "eval_fraction",
    "options",
    "tagger",
    "tagger_options",
    "thresholds",
    "on_invalid",
    "kind",
)
_TOP_KEYS = ("tokenizer", "seed", "eval_fraction", "domains", "sources", "decontaminate")
DEFAULT_EVAL_SETS = ("gsm8k", "math500", "humaneval", "mbpp")
_DECONTAMINATE_KEYS = ("against", "ngram", "action", "lm_eval_include")


@dataclass
class Source:
    name: str
    reader: str  # jsonl | parquet | auto (by extension) | one of GENERATED_READERS
    path: str | None
    domain: str | None
    text_field: str = "text"
    domain_field: str = "domain"
    eval_fraction: float = 0.01
    options: dict = field(default_factory=dict)
    where: str = ""  # "spec.yaml: sources[i]" for messages
    tagger: str | None = None  # a tagger decides each document's domain (registry name)
    tagger_options: dict = field(default_factory=dict)
    thresholds: dict = field(default_factory=dict)  # the tagger's defaults, the YAML's merged in
    on_invalid: str = "error"  # a document the tagger cannot read: error | skip (and count)
    kind: str = "auto"  # how rows are read by the tagger (ablate.data.tagging.base.KINDS)

    @property
    def generated(self) -> bool:
        return self.reader in GENERATED_READERS


@dataclass
class Decontaminate:
    against: list = field(default_factory=lambda: list(DEFAULT_EVAL_SETS))
    ngram: int = 13
    action: str = "drop"  # drop | keep
    explicit: bool = False  # the YAML named the sets: a missing one is an error, not a note
    lm_eval_include: str | None = None  # local lm-eval task YAMLs (for lm_eval:<task>)

    def to_dict(self) -> dict:
        body = {"against": list(self.against), "ngram": self.ngram, "action": self.action}
        if self.lm_eval_include:
            body["lm_eval_include"] = self.lm_eval_include
        return body


@dataclass
class CorporaSpec:
    sources: list[Source]
    tokenizer: object = "byte"
    seed: int = 1234
    eval_fraction: float = 0.01
    domains: list[str] = field(default_factory=list)
    base_dir: str = "."
    origin: str = "<spec>"
    decontaminate: Decontaminate | None = field(default_factory=Decontaminate)

    @property
    def taxonomy(self) -> Taxonomy:
        return Taxonomy(self.domains)

    def to_dict(self) -> dict:
        """The normalized spec, as recorded in the manifest."""
        return {
            "tokenizer": self.tokenizer,
            "seed": self.seed,
            "domains": list(self.domains),
            "sources": [
                {
                    "name": s.name,
                    "reader": s.reader,
                    "path": s.path,
                    "domain": s.domain,
                    "text_field": s.text_field,
                    "domain_field": s.domain_field,
                    "eval_fraction": s.eval_fraction,
                    "options": s.options,
                    **(
                        {
                            "tagger": s.tagger,
                            "tagger_options": s.tagger_options,
                            "thresholds": s.thresholds,
                            "on_invalid": s.on_invalid,
                            "kind": s.kind,
                        }
                        if s.tagger
                        else {}
                    ),
                }
                for s in self.sources
            ],
            "decontaminate": self.decontaminate.to_dict() if self.decontaminate else False,
        }


BUILTIN_SPECS = {
    "toyworld": {
        "tokenizer": "byte",
        "seed": 1234,
        "sources": [{"reader": "toyworld", "name": "toyworld", "eval_fraction": 0.05}],
    },
}


def load_corpora_spec(arg: str) -> CorporaSpec:
    """Load a corpora YAML, or a built-in spec by name (``toyworld``)."""
    if arg in BUILTIN_SPECS and not os.path.exists(arg):
        return parse_corpora_spec(BUILTIN_SPECS[arg], origin=arg, base_dir=".")
    if not os.path.isfile(arg):
        raise AblateError(
            f"{arg}: no such corpora YAML (or built-in spec: {', '.join(BUILTIN_SPECS)})"
        )
    raw = load_yaml_file(arg, "corpora YAML")
    return parse_corpora_spec(raw, origin=arg, base_dir=os.path.dirname(os.path.abspath(arg)))


def parse_corpora_spec(raw: object, origin: str, base_dir: str) -> CorporaSpec:
    """Validate a spec mapping; every message reads ``<origin>: <field>: what (allowed: ...)``."""
    check_keys(raw, _TOP_KEYS, origin, required=("sources",))
    domains = raw.get("domains") or []
    check_type(domains, list, f"{origin}: domains", "a list of domain tags")
    taxonomy = Taxonomy(domains, where=f"{origin}: domains")
    seed = check_number(raw.get("seed", 1234), f"{origin}: seed", integer=True, ge=0, le=INT64_MAX)
    tokenizer = raw.get("tokenizer", "byte")
    check_type(
        tokenizer,
        (str, dict),
        f"{origin}: tokenizer",
        "byte, a tokenizer.json path or {kind: hf, path: ..., eod_token: ...}",
    )
    default_eval = check_fraction(raw.get("eval_fraction", 0.01), f"{origin}: eval_fraction")
    sources_raw = check_type(raw["sources"], list, f"{origin}: sources", "a list of sources")
    if not sources_raw:
        raise AblateError(f"{origin}: sources: the list is empty (at least one source is needed)")
    sources: list[Source] = []
    for i, s in enumerate(sources_raw):
        where = f"{origin}: sources[{i}]"
        check_keys(s, _SOURCE_KEYS, where)
        reader = s.get("reader", "auto")
        readers = ("auto",) + FILE_READERS + GENERATED_READERS
        if not isinstance(reader, str) or reader not in readers:
            raise AblateError(
                f"{where}.reader: {show(reader)} is not a reader "
                f"(allowed: auto, {', '.join(FILE_READERS + GENERATED_READERS)})"
            )
        path = s.get("path")
        if path is None and reader not in GENERATED_READERS:
            raise AblateError(f"{where}: missing required key 'path'")
        if path is not None:
            check_type(path, str, f"{where}.path", "a file, directory or glob")
        domain = s.get("domain")
        if domain is not None:
            taxonomy.validate(domain, f"{where}.domain")
        name = s.get("name")
        if name is None:
            name = _default_name(path, reader, i)
        if not isinstance(name, str) or not _NAME_RE.match(name) or len(name) > 200:
            raise AblateError(
                f"{where}.name: {show(name)} is not a source name "
                "(allowed: letters, digits, '_', '.' or '-', at most 200)"
            )
        if any(o.name == name for o in sources):
            raise AblateError(
                f"{where}.name: {show(name)} is used by another source (names must be unique)"
            )
        options = s.get("options") or {}
        check_names(options, f"{where}.options", "a mapping of reader options")
        tagging = _tagging_fields(s, where)
        if reader == "files" and domain is None and not tagging:
            raise AblateError(
                f"{where}: a 'files' source needs a 'domain' or a 'tagger' (its files carry no "
                "domain of their own)"
            )
        sources.append(
            Source(
                name=name,
                reader=reader,
                path=path,
                domain=domain,
                text_field=check_type(
                    s.get("text_field", "text"), str, f"{where}.text_field", "a field name"
                ),
                domain_field=check_type(
                    s.get("domain_field", "domain"), str, f"{where}.domain_field", "a field name"
                ),
                eval_fraction=check_fraction(
                    s.get("eval_fraction", default_eval), f"{where}.eval_fraction"
                ),
                options=options,
                where=where,
                **tagging,
            )
        )
    return CorporaSpec(
        sources=sources,
        tokenizer=tokenizer,
        seed=seed,
        eval_fraction=default_eval,
        domains=taxonomy.extra,
        base_dir=base_dir,
        origin=origin,
        decontaminate=_decontaminate(raw.get("decontaminate", True), f"{origin}: decontaminate"),
    )


def _tagging_fields(s: dict, where: str) -> dict:
    """The tagging keys of one source, validated against the tagger they name (unknown tagger,
    bad option, a threshold on a score the tagger does not decide on: one line each)."""
    keys = ("tagger_options", "thresholds", "on_invalid", "kind")
    if "tagger" not in s:
        for key in keys:
            if key in s:
                raise AblateError(f"{where}.{key}: only meaningful with 'tagger' (code or math)")
        return {}
    from ablate.data.tagging.base import KINDS
    from ablate.data.tagging.registry import check_thresholds, tagger_class

    cls = tagger_class(s["tagger"], f"{where}.tagger")
    if "domain" in s:
        raise AblateError(
            f"{where}.domain: a tagged source gets its domains from the tagger; drop 'domain' "
            "or 'tagger'"
        )
    options = check_names(
        s.get("tagger_options") or {}, f"{where}.tagger_options", "a mapping of tagger options"
    )
    tagger = cls(options, f"{where}.tagger_options")
    return {
        "tagger": s["tagger"],
        "tagger_options": tagger.describe()["options"],
        "thresholds": check_thresholds(tagger, s.get("thresholds"), f"{where}.thresholds"),
        "on_invalid": check_choice(
            s.get("on_invalid", "error"), ("error", "skip"), f"{where}.on_invalid"
        ),
        "kind": check_choice(s.get("kind", "auto"), KINDS, f"{where}.kind"),
    }


def _decontaminate(value: object, where: str) -> Decontaminate | None:
    if value is False:
        return None
    if value is True:
        return Decontaminate()
    check_keys(value, _DECONTAMINATE_KEYS, where)
    against = value.get("against", list(DEFAULT_EVAL_SETS))
    check_type(against, list, f"{where}.against", "a list of eval set names or files")
    if not against:
        raise AblateError(f"{where}.against: the list is empty (or set decontaminate: false)")
    for i, name in enumerate(against):
        check_type(name, str, f"{where}.against[{i}]", "an eval set name or a file")
    ngram = check_number(value.get("ngram", 13), f"{where}.ngram", integer=True, ge=1, le=64)
    action = check_choice(value.get("action", "drop"), ("drop", "keep"), f"{where}.action")
    include = value.get("lm_eval_include")
    if include is not None:
        check_type(include, str, f"{where}.lm_eval_include", "a directory of lm-eval task YAMLs")
    return Decontaminate(list(against), ngram, action, "against" in value, include)


def _default_name(path: str | None, reader: str, index: int) -> str:
    """A source's name when none is given: the reader's for generated sources, else the last
    path component that is not a glob, without extensions."""
    if reader in GENERATED_READERS or path is None:
        return reader
    parts = [
        p
        for p in path.replace(os.sep, "/").split("/")
        if p not in ("", ".", "..") and not any(c in p for c in "*?[")
    ]
    stem = parts[-1] if parts else ""
    for suffix in (".gz", ".jsonl", ".json", ".parquet"):
        stem = stem.removesuffix(suffix)
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", stem).lstrip("_.-")
    return stem or f"source{index}"


def resolve_files(source: Source, base_dir: str) -> list[str]:
    """The input files of a file source, sorted, each with a known format."""
    from ablate.data.ingest import file_format

    pattern = os.path.join(base_dir, source.path)
    if source.reader == "files":  # raw documents: every file, whatever its extension
        return _raw_document_files(source, pattern)
    if os.path.isdir(pattern):
        found = [os.path.join(d, f) for d, _, fs in os.walk(pattern) for f in fs]
        files = sorted(f for f in found if file_format(f))
        if not files:
            raise AblateError(
                f"{source.where}.path: directory {show(source.path)} holds no .jsonl, .json, "
                ".jsonl.gz or .parquet file"
            )
        return files
    if any(c in source.path for c in "*?["):
        files = sorted(f for f in glob.glob(pattern, recursive=True) if os.path.isfile(f))
        if not files:
            raise AblateError(f"{source.where}.path: {show(source.path)} matches no file")
    elif os.path.isfile(pattern):
        files = [pattern]
    else:
        raise AblateError(f"{source.where}.path: {show(source.path)} does not exist")
    for f in files:
        fmt = file_format(f) if source.reader == "auto" else source.reader
        if fmt is None:
            raise AblateError(
                f"{source.where}.path: cannot tell the format of {show(f)} (use .jsonl, .json, "
                ".jsonl.gz or .parquet, or set 'reader')"
            )
    return files


def _raw_document_files(source: Source, pattern: str) -> list[str]:
    """The files of a ``reader: files`` source, sorted (hidden files and directories and
    ``__pycache__`` left out: they are not documents anyone meant to train on)."""
    if os.path.isdir(pattern):
        files = []
        for d, dirs, names in os.walk(pattern):
            dirs[:] = sorted(x for x in dirs if not x.startswith(".") and x != "__pycache__")
            files.extend(os.path.join(d, n) for n in sorted(names) if not n.startswith("."))
    elif any(c in source.path for c in "*?["):
        files = sorted(f for f in glob.glob(pattern, recursive=True) if os.path.isfile(f))
    elif os.path.isfile(pattern):
        files = [pattern]
    else:
        raise AblateError(f"{source.where}.path: {show(source.path)} does not exist")
    if not files:
        raise AblateError(f"{source.where}.path: {show(source.path)} holds no file")
    return files
