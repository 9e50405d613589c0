"""Swarm sweeps: one sweep axis of N mixtures drawn from a Dirichlet around a prior mix.

```yaml
swarm:
  n: 20                 # mixtures (1 to 10,000); each is one point (times seeds/data_seeds)
  stage: mixed          # whose mix is drawn; default: the recipe's only stage
  prior: tokens         # the Dirichlet's mean: tokens (the base's budgets, normalised),
                        # uniform, or a mapping domain -> weight (normalised; every domain > 0)
  concentration: 10     # the Dirichlet's total concentration: alpha_K = concentration * prior_K
  seed: 0               # numpy default_rng(seed): the same spec draws the same points
  min_share: 0.02       # floor per domain: a draw with a share below it is rejected, redrawn
  max_epochs: 2         # repetition cap: a draw asking more than max_epochs x a dataset's tokens
                        # is rejected, redrawn (the recipe's own caps, default 4, always hold)
  min_distance: 0.05    # total variation to every accepted mixture: closer draws are redrawn
  densities: false      # true: a family entry's density keys are domains of the mixture too
```

**The domains.** By default the mixture is over the stage's mix entries as the base recipe names
them (``code.exec``, ``math``, ``general``): each draw gives every entry an explicit ``tokens``
budget, and an entry's ``density`` (if any) stays as the base has it. With ``densities: true``
a family entry with a ``density`` (``math: {density: {math.text: .5, math.structured: .5}}``) is
replaced in the mixture by its density keys: the draw is over the leaves, and the family gets the
sum of its leaves' tokens and the density that splits it as drawn. Prior mappings and the
recorded weights then name the leaves.

**A point.** The drawn shares become whole token counts summing exactly to the stage's budget
(the base's, after ``set:``) by the largest remainder; the stage's ``tokens`` is set to that
budget and every swarmed entry gets ``tokens`` (no ``share``), so the plan is exact as usual.
Every check below is made on those integers, i.e. on what is trained: each domain gets at least
one token; ``min_share`` and the caps bind the integer shares; ``min_distance`` is the total
variation distance (half the L1 distance: the fraction of tokens that would have to move) between
integer share vectors. Rejection, not clipping: clipping would pile points on the floor and the
cap, while rejection keeps the Dirichlet's shape inside the allowed region (its mean moves
towards the inside of that region when the floor or a cap binds).

**Repetition caps** use the same arithmetic as the plan (``ablate.recipe.plan``): the stage
budget is rounded to whole steps (one factor for every entry), an entry's tokens are split over
its density groups and datasets as the plan splits them, and a dataset may be read at most
``cap`` times, where ``cap`` is the entry's ``max_epochs`` (default 4), lowered to the swarm's
``max_epochs`` when that is smaller (the swarm's may be below 1: at most that fraction of the
data). So every accepted point plans; the datasets' sizes come from the data manifests, which
must be prepared before the sweep is expanded (or its status read).

**Determinism.** Draws come in batches of ``BATCH`` from ``numpy.random.default_rng(seed)`` and
are accepted in order, so the same spec gives the same points byte for byte, and a larger ``n``
keeps the first points of a smaller one. After a bounded number of rejected draws the swarm is
refused in one line that says which check rejected them and what to relax.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from ablate.errors import AblateError, show
from ablate.validate import INT64_MAX, build_dataclass, check_names, check_number, checked

N_MAX = 10_000
BATCH = 256  # draws per default_rng call: part of the stream's definition (determinism)
PRIORS = ("tokens", "uniform")


@dataclass
class SwarmSpec:
    n: int = checked(ge=1, le=N_MAX)
    stage: Any = None  # a stage name or index; None: the only stage
    prior: Any = "tokens"  # tokens | uniform | {domain: weight}
    concentration: float = checked(10.0, gt=0, le=1e6)
    seed: int = checked(0, ge=0, le=INT64_MAX)
    min_share: float = checked(0.0, ge=0, lt=1)
    max_epochs: Optional[float] = checked(None, gt=0, lt=1e300)
    min_distance: float = checked(0.05, ge=0, le=1)
    densities: bool = False

    def validate(self, where: str) -> None:
        if self.stage is not None and (
            isinstance(self.stage, bool)
            or not isinstance(self.stage, (str, int))
            or (isinstance(self.stage, int) and self.stage < 0)
        ):
            raise AblateError(
                f"{where}.stage: expected a stage name or index, got {show(self.stage)}"
            )
        if isinstance(self.prior, str):
            if self.prior not in PRIORS:
                raise AblateError(
                    f"{where}.prior: {show(self.prior)} is not allowed (allowed: tokens, "
                    "uniform, or a mapping from domain to weight)"
                )
            return
        check_names(
            self.prior, f"{where}.prior", "tokens, uniform, or a mapping from domain to weight"
        )
        if not self.prior:
            raise AblateError(f"{where}.prior: empty mapping (give a weight for every domain)")
        for k, v in self.prior.items():
            check_number(v, f"{where}.prior.{k}", gt=0, lt=1e300)


def parse_swarm(raw: Any, where: str) -> SwarmSpec:
    return build_dataclass(SwarmSpec, raw, where)


@dataclass
class Component:
    """One domain of the mixture: a mix entry, or (``densities: true``) one density key of it."""

    name: str
    selector: str  # the mix entry it belongs to
    density_key: Optional[str]  # None: the whole entry


@dataclass
class Swarm:
    """The drawn mixtures of one stage: ``tokens_NK[i, k]`` tokens of component k in mixture i."""

    stage_index: int
    stage_name: str
    components: list[Component]
    total: int  # the stage's budget: every row of tokens_NK sums to it
    prior_K: np.ndarray
    cap_K: np.ndarray  # most tokens each component may get (inf: no dataset limits it)
    tokens_NK: np.ndarray
    spec: SwarmSpec = field(repr=False, default=None)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.components]

    def shares(self, i: int) -> dict[str, float]:
        return {c.name: int(t) / self.total for c, t in zip(self.components, self.tokens_NK[i])}

    def labels(self, i: int) -> dict:
        """The point's columns in sweep.json and the expand table: its index and its shares."""
        return {"mixture": i, **{f"w.{k}": v for k, v in self.shares(i).items()}}

    def sets(self, i: int) -> list[tuple[str, Any]]:
        """(dotted path, value) that make mixture ``i`` the stage's mix."""
        stage = f"stages.{self.stage_index}"
        out: list[tuple[str, Any]] = [(f"{stage}.tokens", self.total)]
        by_entry: dict[str, list[tuple[Component, int]]] = {}
        for c, t in zip(self.components, self.tokens_NK[i]):
            by_entry.setdefault(c.selector, []).append((c, int(t)))
        for selector, parts in by_entry.items():
            tokens = sum(t for _, t in parts)
            out += [
                (f"{stage}.mix.{selector}.share", None),
                (f"{stage}.mix.{selector}.tokens", tokens),
            ]
            if parts[0][0].density_key is not None:
                density = {c.density_key: t / tokens for c, t in parts}
                out.append((f"{stage}.mix.{selector}.density", density))
        return out

    def record(self) -> dict:
        """What sweep.json keeps about the swarm (a fit's domains, prior and caps)."""
        spec = dataclasses.asdict(self.spec)
        return {
            **spec,
            "stage": self.stage_name,
            "domains": self.names,
            "total_tokens": self.total,
            "prior": {k: float(p) for k, p in zip(self.names, self.prior_K)},
            "max_tokens": {
                k: (None if math.isinf(c) else math.floor(c))
                for k, c in zip(self.names, self.cap_K)
            },
        }


def build_swarm(spec: SwarmSpec, recipe, where: str) -> Swarm:
    """Draw the swarm over ``recipe`` (the base after ``set:``); ``where`` starts every message."""
    at = f"{where}: swarm"
    si = _stage_index(spec, recipe, at)
    stage = recipe.stages[si]
    from ablate.recipe.plan import _entry_budgets

    budgets = _entry_budgets(stage, f"{where}: base: stages[{si}]")
    total = int(stage.tokens) if stage.tokens is not None else int(round(sum(budgets.values())))
    components, prior_tokens = [], []
    for e in stage.mix:
        if spec.densities and e.density:
            for key, frac in e.density.items():
                components.append(Component(key, e.selector, key))
                prior_tokens.append(budgets[e.selector] * frac)
        else:
            components.append(Component(e.selector, e.selector, None))
            prior_tokens.append(budgets[e.selector])
    names = [c.name for c in components]
    if spec.densities and all(c.density_key is None for c in components):
        raise AblateError(
            f"{at}.densities: true, but no entry of stage {show(stage.name)}'s mix has a density"
        )
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise AblateError(f"{at}: domain {show(dup)} appears twice in stage {stage.name}'s mix")
    if len(components) < 2:
        raise AblateError(
            f"{at}: stage {show(stage.name)}'s mix has one domain ({names[0]}); a swarm needs "
            "at least two (with densities: true a family's density keys count)"
        )
    prior_K = _prior(spec, names, np.array(prior_tokens, dtype=float), at)
    if spec.min_share * len(names) >= 1:
        raise AblateError(
            f"{at}.min_share: {spec.min_share:g} x {len(names)} domains leaves no room "
            f"(allowed: below 1/{len(names)} = {1 / len(names):.4g})"
        )
    cap_K = _caps(spec, recipe, stage, si, components, total, where)
    if np.minimum(cap_K, total).sum() < total:
        held = ", ".join(f"{n}: {math.floor(c):,}" for n, c in zip(names, cap_K) if c < total)
        raise AblateError(
            f"{at}.max_epochs: under the repetition caps stage {stage.name}'s domains hold "
            f"fewer than its {total:,} tokens ({held}); raise max_epochs, lower the budget, or "
            "add data"
        )
    floor = max(1, math.ceil(spec.min_share * total - 1e-9))
    short = [n for n, c in zip(names, cap_K) if c < floor]
    if short:
        field_ = "min_share" if spec.min_share > 0 else "max_epochs"
        raise AblateError(
            f"{at}.{field_}: {short[0]} may get at most "
            f"{math.floor(cap_K[names.index(short[0])]):,} tokens under its repetition cap, "
            f"below its floor of {floor:,} (min_share, and at least 1 token); lower min_share, "
            "raise max_epochs, or add data"
        )
    tokens_NK = draw_mixtures(
        prior_K,
        spec.concentration,
        spec.n,
        spec.seed,
        total,
        cap_K=cap_K,
        min_share=spec.min_share,
        min_distance=spec.min_distance,
        where=at,
    )
    return Swarm(si, stage.name, components, total, prior_K, cap_K, tokens_NK, spec)


def draw_mixtures(
    prior_K: np.ndarray,
    concentration: float,
    n: int,
    seed: int,
    total: int,
    cap_K: np.ndarray | None = None,
    min_share: float = 0.0,
    min_distance: float = 0.0,
    where: str = "swarm",
) -> np.ndarray:
    """``n`` integer token vectors (rows sum to ``total``) from Dirichlet(concentration x prior),
    each component >= 1 token, >= ``min_share`` x total and <= ``cap_K``, every pair at total
    variation >= ``min_distance``. Accepted in draw order; refused after bounded redraws."""
    prior_K = np.asarray(prior_K, dtype=float)
    K = prior_K.size
    cap_K = np.full(K, np.inf) if cap_K is None else np.asarray(cap_K, dtype=float)
    alpha_K = concentration * prior_K / prior_K.sum()
    floor = max(1, math.ceil(min_share * total - 1e-9))
    rng = np.random.default_rng(seed)
    shares_NK = np.empty((n, K))
    tokens_NK = np.empty((n, K), dtype=np.int64)
    # floor and caps are checked a batch at a time, so they may reject many draws cheaply; the
    # distance check costs O(accepted) per draw and gets its own, smaller budget
    max_draws, max_close = max(100_000, 200 * n), max(1_000, 20 * n)
    accepted = draws = below = over = close = 0
    while accepted < n:
        if draws >= max_draws or close >= max_close:
            raise AblateError(_exhausted(where, accepted, n, draws, below, over, close))
        x_BK = rng.dirichlet(alpha_K, size=BATCH)
        t_BK = round_to_total(x_BK, total)
        low = (t_BK < floor).any(axis=1)
        high = (t_BK > cap_K).any(axis=1) & ~low
        examined = BATCH  # the draws looked at: all of the batch unless it stops inside it
        for b in np.flatnonzero(~(low | high)):
            s_K = t_BK[b] / total
            if accepted and min_distance > 0:
                tv = 0.5 * np.abs(shares_NK[:accepted] - s_K).sum(axis=1).min()
                if tv < min_distance:
                    close += 1
                    if close >= max_close:
                        examined = b + 1
                        break
                    continue
            shares_NK[accepted], tokens_NK[accepted] = s_K, t_BK[b]
            accepted += 1
            if accepted == n:
                examined = b + 1
                break
        draws += examined
        below += int(low[:examined].sum())
        over += int(high[:examined].sum())
    return tokens_NK


def round_to_total(x_BK: np.ndarray, total: int) -> np.ndarray:
    """Rows of shares -> whole numbers summing to ``total`` (largest remainder; ties by
    position, as the plan apportions samples)."""
    q_BK = x_BK / x_BK.sum(axis=1, keepdims=True) * total
    base_BK = np.floor(q_BK).astype(np.int64)
    short_B = total - base_BK.sum(axis=1)
    order_BK = np.argsort(-(q_BK - base_BK), axis=1, kind="stable")
    rank_BK = np.empty_like(order_BK)
    np.put_along_axis(rank_BK, order_BK, np.arange(x_BK.shape[1])[None, :], axis=1)
    return base_BK + (rank_BK < short_B[:, None])


def _exhausted(where, accepted, n, draws, below, over, close) -> str:
    reasons, relax = [], []
    if below:
        reasons.append(f"{below:,} below min_share (or 1 token)")
        relax.append("lower min_share (or raise concentration)")
    if over:
        reasons.append(f"{over:,} over a repetition cap")
        relax.append("raise max_epochs")
    if close:
        reasons.append(f"{close:,} within min_distance of an earlier mixture")
        relax.append("lower min_distance, lower n or lower concentration")
    return (
        f"{where}: only {accepted} of {n} mixtures after {draws:,} draws "
        f"({'; '.join(reasons)}); {', '.join(relax) or 'lower n'}"
    )


def _stage_index(spec: SwarmSpec, recipe, at: str) -> int:
    names = [s.name for s in recipe.stages]
    if spec.stage is None:
        if len(names) == 1:
            return 0
        raise AblateError(
            f"{at}.stage: required, the recipe has {len(names)} stages ({', '.join(names)}); "
            "name the one whose mix the swarm draws"
        )
    if isinstance(spec.stage, int):
        if spec.stage < len(names):
            return spec.stage
    elif spec.stage in names:
        return names.index(spec.stage)
    raise AblateError(
        f"{at}.stage: {show(spec.stage)} is not a stage of the recipe (stages: "
        f"{', '.join(names)}, or their indices 0-{len(names) - 1})"
    )


def _prior(spec: SwarmSpec, names: list[str], tokens_K: np.ndarray, at: str) -> np.ndarray:
    if spec.prior == "uniform":
        return np.full(len(names), 1 / len(names))
    if spec.prior == "tokens":
        zero = [n for n, t in zip(names, tokens_K) if not t > 0]
        if zero:
            raise AblateError(
                f"{at}.prior: tokens gives {zero[0]} a weight of 0 (its density in the base); a "
                "Dirichlet needs every weight > 0 (use prior: uniform or a mapping)"
            )
        return tokens_K / tokens_K.sum()
    unknown = [k for k in spec.prior if k not in names]
    if unknown:
        raise AblateError(
            f"{at}.prior.{unknown[0]}: not a domain of the swarm (domains: {', '.join(names)})"
        )
    missing = [k for k in names if k not in spec.prior]
    if missing:
        raise AblateError(
            f"{at}.prior: no weight for {', '.join(missing)} (give one for every domain: "
            f"{', '.join(names)})"
        )
    w_K = np.array([float(spec.prior[k]) for k in names])
    return w_K / w_K.sum()


def _caps(spec, recipe, stage, si: int, components, total: int, where: str) -> np.ndarray:
    """Each component's most tokens (as the recipe states them) under the repetition caps."""
    from ablate.data.manifest import load_manifests
    from ablate.data.taxonomy import Taxonomy
    from ablate.recipe.plan import _split_entry
    from ablate.recipe.schema import DEFAULT_MAX_EPOCHS

    manifests = load_manifests(
        recipe.data.manifests,
        where=f"{where}: swarm: the repetition caps need the datasets' sizes: data.manifests",
    )
    taxonomy = Taxonomy([d for m in manifests for d in m.domains])
    pool = [(m, e) for m in manifests for e in m.datasets]
    # the plan scales every entry by one factor, so the stage is whole steps
    seq, gbs = recipe.training.seq_length, recipe.training.global_batch_size
    scale = max(1, round(total / (seq * gbs))) * gbs * seq / total
    entries = {e.selector: e for e in stage.mix}
    cap_K = np.full(len(components), np.inf)
    for k, c in enumerate(components):
        e = entries[c.selector]
        cap = e.max_epochs if e.max_epochs is not None else DEFAULT_MAX_EPOCHS
        if spec.max_epochs is not None:
            cap = min(cap, spec.max_epochs)
        if c.density_key is not None:
            e = dataclasses.replace(e, density={c.density_key: 1.0})
        at = f"{where}: base: stages[{si}].mix.{c.selector}"
        for _, d, frac in _split_entry(e, 1.0, pool, taxonomy, at):
            if frac > 0:
                cap_K[k] = min(cap_K[k], cap * d.tokens / (frac * scale))
    return cap_K
