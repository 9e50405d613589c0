"""Budget arithmetic: a recipe's stages + the manifests -> exact sample counts per dataset.

For each stage:

1. The stage budget is rounded to whole optimizer steps (``seq_length x global_batch_size``
   tokens each), so stage boundaries fall on step boundaries. Every entry's budget scales by
   the same factor (< half a step in all), and that scaled figure is what the plan calls
   *requested*.
2. An entry's budget goes to its ``density`` groups (sub-domains), then to the datasets of
   each group in proportion to their tokens (or the entry's ``weights``).
3. Samples per dataset are apportioned by largest remainder: each dataset's count is within one
   sample of ``requested / seq_length``, and the counts sum exactly to the stage's samples. So
   *realized* tokens (``samples x seq_length``) are within one sequence of requested, per
   dataset, by construction; the compiled indices prove it (tests read them back).

A dataset used by several stages continues where the previous stage stopped
(``sample_offset``): stage 2 does not re-read stage 1's samples before it must.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, fields, is_dataclass

from ablate.data.manifest import DatasetEntry, Manifest, load_manifests, verify_datasets
from ablate.data.taxonomy import Taxonomy, is_under
from ablate.errors import AblateError, show
from ablate.io import write_json_atomic
from ablate.recipe.budget import format_tokens
from ablate.recipe.schema import DEFAULT_MAX_EPOCHS, MixEntry, Recipe

PLAN_FORMAT = "ablate.plan/1"


@dataclass
class PlanDataset:
    prefix: str  # relative to its manifest's directory
    domain: str
    source: str
    selector: str  # the mix entry it came from
    path: str  # absolute path prefix of the .bin/.idx
    fingerprint: str
    dataset_tokens: int
    weight: float
    samples: int
    tokens_requested: int
    tokens_realized: int
    epochs: float
    sample_offset: int  # samples of this dataset consumed by earlier stages
    cache_key: str = ""  # per-dataset index, filled by compile


@dataclass
class PlanStage:
    name: str
    tokens_nominal: int  # the recipe's figure
    tokens: int  # rounded to whole steps
    steps: int
    samples: int
    datasets: list[PlanDataset]
    blend_key: str = ""  # filled by compile

    def domain_totals(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for d in self.datasets:
            t = out.setdefault(
                d.domain, {"tokens_requested": 0, "tokens_realized": 0, "samples": 0}
            )
            t["tokens_requested"] += d.tokens_requested
            t["tokens_realized"] += d.tokens_realized
            t["samples"] += d.samples
        return dict(sorted(out.items()))


@dataclass
class Plan:
    recipe: str
    # the data order's seed (the recipe's data_seed, else its seed; the name predates data_seed
    # and stays, so plans and fingerprints of recipes without one are unchanged)
    seed: int
    seq_length: int
    global_batch_size: int
    tokenizer: dict
    manifests: list[str]
    stages: list[PlanStage]
    cache_dir: str
    fingerprint: str = ""  # of everything above: training refuses a plan that differs

    def to_dict(self) -> dict:
        body = _plain(self)
        body["format"] = PLAN_FORMAT
        for stage, s in zip(body["stages"], self.stages):
            stage["domains"] = s.domain_totals()
        totals: dict[str, dict[str, int]] = {}
        for s in self.stages:
            for dom, t in s.domain_totals().items():
                agg = totals.setdefault(
                    dom, {"tokens_requested": 0, "tokens_realized": 0, "samples": 0}
                )
                for k in agg:
                    agg[k] += t[k]
        body["domains"] = dict(sorted(totals.items()))
        return body

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"


def verify_plan(plan: Plan) -> None:
    """The quick check ``make_plan`` makes (each read dataset's .bin size and .idx hash against
    its manifest), for a plan made with ``verify=False``; hashes memoized in the cache as there."""
    manifests = load_manifests(plan.manifests, where=f"{plan.recipe}: data.manifests")
    by_path = {m.abs_prefix(d): (m, d) for m in manifests for d in m.datasets}
    memo = _read_idx_memo(plan.cache_dir)
    verify_datasets([by_path[pd.path] for stage in plan.stages for pd in stage.datasets], memo)
    _save_idx_memo(plan.cache_dir, memo)


def _idx_memo_path(cache_dir: str) -> str:
    return os.path.join(cache_dir, "verified-idx.json")


def _read_idx_memo(cache_dir: str) -> dict:
    """The .idx hashes of earlier checks (``Manifest.verify``'s memo), kept in the cache."""
    return _read_json(_idx_memo_path(cache_dir))


def _save_idx_memo(cache_dir: str, memo: dict | None) -> None:
    if memo and os.path.isdir(cache_dir):  # only where a compile already made the cache
        write_json_atomic(_idx_memo_path(cache_dir), memo, indent=None)


def _plain(obj):
    """``dataclasses.asdict`` for these flat records (str, int, float, lists, dicts), without its
    deep copies: a sweep writes a plan per point, each with a record per dataset."""
    if is_dataclass(obj):
        return {f.name: _plain(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, list):
        return [_plain(x) for x in obj]
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    return obj


def compute_fingerprint(plan: Plan) -> str:
    body = plan.to_dict()
    body.pop("fingerprint", None)
    for stage in body["stages"]:
        stage.pop("blend_key", None)
        for d in stage["datasets"]:
            d.pop("cache_key", None)
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


def make_plan(recipe: Recipe, verify: bool = True, save_memo: bool = True) -> Plan:
    """The budget arithmetic of ``recipe``. ``verify=False`` leaves out the quick check of the
    datasets' files (``verify_plan``), for a caller that runs it later (a sweep, while it
    computes blends). ``save_memo=False`` makes the check without its one write (the memo of
    verified .idx hashes in the cache), for ``compile --dry-run``, which writes nothing."""
    where = recipe.source or recipe.name
    manifests = _load(recipe, where)
    taxonomy = Taxonomy([d for m in manifests for d in m.domains])
    pool = [(m, e) for m in manifests for e in m.datasets]
    seq, gbs = recipe.training.seq_length, recipe.training.global_batch_size
    used: dict[str, int] = {}  # path -> samples consumed so far
    memo = _read_idx_memo(recipe.data.cache_dir) if verify else None
    stages = []
    for i, stage in enumerate(recipe.stages):
        at = f"{where}: stages[{i}]"
        entries = _entry_budgets(stage, at)
        nominal = sum(entries.values())
        if (
            2 * nominal < seq * gbs
        ):  # rounding would double the budget: blame the batch, not the budget
            raise AblateError(
                f"{where}: training.global_batch_size: one step of {gbs:,} sequences x {seq:,} "
                f"tokens is {format_tokens(seq * gbs)} tokens, more than twice the budget of stage "
                f"{show(stage.name)}, {format_tokens(nominal)} (allowed: a batch of at most "
                f"{max(1, int(2 * nominal // seq)):,} "
                "sequences, or a larger budget)"
            )
        steps = max(1, round(nominal / (seq * gbs)))
        samples = steps * gbs
        scale = samples * seq / nominal
        requested: list[tuple[MixEntry, Manifest, DatasetEntry, float]] = []
        taken: dict[str, str] = {}
        for entry in stage.mix:
            for m, d, tokens in _split_entry(
                entry, entries[entry.selector] * scale, pool, taxonomy, f"{at}.mix.{entry.selector}"
            ):
                key = m.abs_prefix(d)
                if key in taken:
                    raise AblateError(
                        f"{at}.mix.{entry.selector}: dataset {d.prefix} is also selected by "
                        f"mix.{taken[key]} (each dataset may be in one entry per stage)"
                    )
                taken[key] = entry.selector
                requested.append((entry, m, d, tokens))
        if verify:  # quick check: the files are the manifest's
            verify_datasets([(m, d) for _, m, d, _ in requested], memo)
        counts = _apportion([t / seq for *_, t in requested], samples)
        datasets = []
        for (entry, m, d, tokens), n in zip(requested, counts):
            if n == 0:
                continue
            cap = entry.max_epochs if entry.max_epochs is not None else DEFAULT_MAX_EPOCHS
            epochs = tokens / d.tokens
            if epochs > cap + 1e-9:
                raise AblateError(
                    f"{at}.mix.{entry.selector}: asks for {format_tokens(tokens)} tokens of "
                    f"{d.prefix}, which holds {format_tokens(d.tokens)} ({d.tokens:,} tokens): "
                    f"{epochs:.2f} epochs > max_epochs {cap:g} "
                    "(raise max_epochs, lower the budget, or add data)"
                )
            path = m.abs_prefix(d)
            datasets.append(
                PlanDataset(
                    prefix=d.prefix,
                    domain=d.domain,
                    source=d.source,
                    selector=entry.selector,
                    path=path,
                    fingerprint=d.fingerprint,
                    dataset_tokens=d.tokens,
                    weight=n / samples,
                    samples=n,
                    tokens_requested=int(round(tokens)),
                    tokens_realized=n * seq,
                    epochs=round(epochs, 6),
                    sample_offset=used.get(path, 0),
                )
            )
            used[path] = used.get(path, 0) + n
        stages.append(PlanStage(stage.name, nominal, samples * seq, steps, samples, datasets))
    if save_memo:
        _save_idx_memo(recipe.data.cache_dir, memo)
    plan = Plan(
        recipe=recipe.name,
        seed=recipe.resolved_data_seed,
        seq_length=seq,
        global_batch_size=gbs,
        tokenizer=manifests[0].tokenizer,
        manifests=[m.path for m in manifests],
        stages=stages,
        cache_dir=recipe.data.cache_dir,
    )
    plan.fingerprint = compute_fingerprint(plan)
    return plan


def _read_json(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return {}


def _load(recipe: Recipe, where: str) -> list[Manifest]:
    manifests = load_manifests(recipe.data.manifests, where=f"{where}: data.manifests")
    if recipe.tokenizer is not None:
        from ablate.data.tokenizer import load_tokenizer

        want = load_tokenizer(recipe.tokenizer, ".", where=f"{where}: tokenizer").fingerprint
        if want != manifests[0].tokenizer["fingerprint"]:
            raise AblateError(
                f"{where}: tokenizer: {want} does not match the manifests' tokenizer "
                f"{manifests[0].tokenizer['fingerprint']}"
            )
    return manifests


def _entry_budgets(stage, at: str) -> dict[str, float]:
    absolute = {e.selector: float(e.tokens) for e in stage.mix if e.tokens is not None}
    shares = {e.selector: e.share for e in stage.mix if e.share is not None}
    fixed = sum(absolute.values())
    if not shares:
        if stage.tokens is not None and stage.tokens != fixed:
            raise AblateError(
                f"{at}.tokens: {format_tokens(stage.tokens)} differs from the sum of the mix's "
                "budgets "
                f"({format_tokens(fixed)}); drop 'tokens' or use shares"
            )
        return absolute
    if abs(sum(shares.values()) - 1) > 1e-6:
        raise AblateError(
            f"{at}.mix: shares sum to {sum(shares.values()):g}, not 1 "
            f"({', '.join(f'{k}: {v:g}' for k, v in shares.items())})"
        )
    if stage.tokens is None:
        raise AblateError(
            f"{at}.tokens: required when the mix has shares (the budget the shares divide)"
        )
    rest = stage.tokens - fixed
    if rest <= 0:
        raise AblateError(
            f"{at}.tokens: {format_tokens(stage.tokens)} leaves nothing for the shares after "
            f"the absolute budgets ({format_tokens(fixed)})"
        )
    return {
        e.selector: absolute.get(e.selector, (shares.get(e.selector) or 0) * rest)
        for e in stage.mix
    }


def _split_entry(entry: MixEntry, budget: float, pool, taxonomy: Taxonomy, at: str):
    """(manifest, dataset, tokens) for each dataset the entry draws from."""
    taxonomy.validate(entry.selector, f"{at}")
    selected = [(m, d) for m, d in pool if is_under(d.domain, entry.selector)]
    if not selected:
        present = sorted({d.domain for _, d in pool})
        raise AblateError(
            f"{at}: selects no dataset (domains in the manifests: {', '.join(present)})"
        )
    groups: list[tuple[float, list]] = []
    if entry.density:
        covered: dict[int, str] = {}
        for key, frac in entry.density.items():
            taxonomy.validate(key, f"{at}.density.{key}")
            if not is_under(key, entry.selector):
                raise AblateError(
                    f"{at}.density.{key}: is outside the domain {entry.selector!r} "
                    f"(density keys must be {entry.selector} or below it)"
                )
            members = [(m, d) for m, d in selected if is_under(d.domain, key)]
            if frac > 0 and not members:
                raise AblateError(f"{at}.density.{key}: selects no dataset")
            for m, d in members:
                if id(d) in covered:
                    raise AblateError(
                        f"{at}.density.{key}: overlaps density.{covered[id(d)]} "
                        f"(dataset {d.prefix})"
                    )
                covered[id(d)] = key
            groups.append((budget * frac, members))
    else:
        groups.append((budget, selected))
    out = []
    for group_budget, members in groups:
        if group_budget <= 0:
            continue
        if entry.weights:
            for key in entry.weights:
                if not any(d.source == key or d.prefix == key for _, d in members):
                    raise AblateError(
                        f"{at}.weights.{key}: no dataset of this entry has that source or prefix "
                        f"(sources: {', '.join(sorted({d.source for _, d in members}))})"
                    )
            w = [
                float(entry.weights.get(d.prefix, entry.weights.get(d.source, 0)))
                for _, d in members
            ]
        else:
            w = [float(d.tokens) for _, d in members]
        total = sum(w)
        if total <= 0:
            raise AblateError(f"{at}: the datasets' weights sum to 0")
        out.extend((m, d, group_budget * wi / total) for (m, d), wi in zip(members, w) if wi > 0)
    return out


def _apportion(quotas: list[float], total: int) -> list[int]:
    """Integers summing to ``total``, each within 1 of its quota (largest remainder method)."""
    # absorbs float drift; quotas already sum to ~total
    scale = total / sum(quotas) if quotas else 0
    q = [x * scale for x in quotas]
    base = [math.floor(x) for x in q]
    short = total - sum(base)
    # ties broken by position, so the result is deterministic
    order = sorted(range(len(q)), key=lambda i: (-(q[i] - base[i]), i))
    for i in order[:short]:
        base[i] += 1
    return base
