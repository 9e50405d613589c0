"""``ablate mix propose``: the mixture that maximises a fit's predicted objective.

Maximises ``objective(w) - kl * KL(w || prior)`` over the simplex, each domain's share between 0
(or its pin) and its repetition cap (tokens held x max_epochs / stage tokens, less half an
optimizer step of rounding slack), pinned shares fixed. The search is deterministic: the prior,
the uniform mixture and 2,048 Dirichlet draws around the prior (from ``seed``) are projected onto
the feasible set and scored in one batch per model; the 8 best start SLSQP (``scipy.optimize``),
which polishes smooth models (log-linear, GP); piecewise-constant trees keep the best draw.

The predicted score's uncertainty combines the chosen models' std per metric as independent:
``sqrt(sum_m (coef_m std_m)^2)``. The recipe written is the fit's base recipe with the stage's
mix replaced by one entry per domain with absolute token counts summing to the base stage's
budget, so ``ablate compile`` takes it as is.
"""

from __future__ import annotations

import copy
import math
import os

import numpy as np

from ablate.errors import AblateError, show
from ablate.mix.fit import load_fit
from ablate.mix.objective import parse_objective

N_DRAWS = 2048
N_STARTS = 8


def project(V_KD, lo_D, hi_D, iters: int = 80):
    """Each row of ``V_KD`` moved onto ``{lo <= w <= hi, sum w = 1}`` (Euclidean projection:
    ``clip(v - tau, lo, hi)`` with ``tau`` found by bisection, all rows at once)."""
    V = np.atleast_2d(np.asarray(V_KD, float))
    a = (V - hi_D[None]).min(1) - 1.0
    b = (V - lo_D[None]).max(1) + 1.0
    for _ in range(iters):
        tau = (a + b) / 2
        s = np.clip(V - tau[:, None], lo_D, hi_D).sum(1)
        a, b = np.where(s > 1, tau, a), np.where(s > 1, b, tau)
    return np.clip(V - ((a + b) / 2)[:, None], lo_D, hi_D)


def _prior(spec: str, body) -> np.ndarray:
    domains = body["domains"]
    if spec == "tokens":
        p = np.array([body["prior_tokens"][d] for d in domains])
    elif spec == "uniform":
        p = np.full(len(domains), 1.0 / len(domains))
    else:
        from ablate.validate import load_yaml_file

        raw = load_yaml_file(spec, "prior")
        if not isinstance(raw, dict) or not raw:
            raise AblateError(f"{spec}: a prior is a mapping of domain -> weight (>= 0)")
        for k, v in raw.items():
            if k not in domains:
                raise AblateError(f"{spec}: {k}: not a domain of the fit ({', '.join(domains)})")
            if (
                isinstance(v, bool)
                or not isinstance(v, (int, float))
                or not v >= 0
                or not math.isfinite(v)
            ):
                raise AblateError(f"{spec}: {k}: {show(v)} (allowed: a finite number >= 0)")
        p = np.array([float(raw.get(d, 0.0)) for d in domains])
        if p.sum() <= 0:
            raise AblateError(f"{spec}: the weights sum to 0")
    return p / p.sum()


def _pins(pins, domains, hi_D) -> dict:
    out = {}
    for pin in pins or ():
        dom, eq, val = str(pin).partition("=")
        if not eq:
            raise AblateError(f"--pin: {show(pin)} (allowed: domain=share, e.g. math.text=0.2)")
        if dom not in domains:
            raise AblateError(f"--pin: {dom!r} is not a domain of the fit ({', '.join(domains)})")
        try:
            share = float(val)
        except ValueError:
            share = float("nan")
        if not 0 <= share <= 1:
            raise AblateError(f"--pin: {pin}: {show(val)} is not a share in [0, 1]")
        cap = hi_D[domains.index(dom)]
        if share > cap + 1e-12:
            raise AblateError(
                f"--pin: {dom}={share:g} is above its repetition cap, a share of {cap:.4g} "
                "(raise --max-epochs or pin less)"
            )
        out[dom] = share
    if sum(out.values()) > 1 + 1e-9:
        raise AblateError(f"--pin: the pinned shares sum to {sum(out.values()):g}, more than 1")
    return out


def _predict(fitted, chosen, terms, W_KD):
    """``(mean_K, std_K)`` of the linear objective's terms (without its constant)."""
    mean, var = np.zeros(len(W_KD)), np.zeros(len(W_KD))
    for m, coef in terms.items():
        mu, sd = fitted[chosen[m][0]][chosen[m][1]].predict(W_KD)
        mean += coef * mu
        var += (coef * sd) ** 2
    return mean, np.sqrt(var)


def _kl(W_KD, p_D):
    W = np.atleast_2d(W_KD)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(W > 0, W * np.log(np.maximum(W, 1e-300) / np.maximum(p_D, 1e-12)), 0.0)
    return t.sum(1)


def _tokens(w_D, total: int) -> list[int]:
    """Whole token counts summing to ``total``, each within 1 of its share (largest remainder)."""
    q = np.asarray(w_D) * total
    base = np.floor(q).astype(np.int64)
    short = int(total - base.sum())
    order = sorted(range(len(q)), key=lambda i: (-(q[i] - base[i]), i))
    for i in order[:short]:
        base[i] += 1
    return [int(x) for x in base]


def propose_mixture(
    fit_dir: str,
    objective: str,
    out: str | None = None,
    prior: str = "tokens",
    kl: float = 0.0,
    max_epochs: float | None = None,
    pins=(),
    name: str | None = None,
    seed: int = 0,
    overwrite: bool = False,
) -> dict:
    """Optimise; write the recipe to ``out`` (if given). Returns ``weights`` ({domain: share}),
    ``predicted``, ``std``, ``kl``, ``objective`` ({metric: coef}), ``recipe`` (the dict)."""
    from scipy.optimize import minimize

    body, fitted = load_fit(fit_dir)
    if out is not None and os.path.lexists(out) and not overwrite:
        raise AblateError(f"{out}: already exists (give --overwrite to replace it)")
    if not (isinstance(kl, (int, float)) and math.isfinite(kl) and kl >= 0):
        raise AblateError(f"--kl: {show(kl)} (allowed: a finite number >= 0)")
    domains, targets = body["domains"], body["targets"]
    D = len(domains)
    terms, const = parse_objective(objective, targets)
    chosen = {t: (body["metrics"][t]["chosen"], targets.index(t)) for t in terms}

    recipe = copy.deepcopy(body["base_recipe"])
    training = recipe.get("training", {})
    step_tokens = int(training.get("seq_length", 1)) * int(training.get("global_batch_size", 1))
    stage_tokens = int(body["stage_tokens"])
    # the plan rounds a stage to whole steps, scaling every entry by up to half a step: keep caps
    # that far inside the epochs limit so the compiled plan never exceeds it
    slack = 1.0 - 0.5 * step_tokens / stage_tokens
    if max_epochs is not None:
        if not (
            isinstance(max_epochs, (int, float)) and max_epochs >= 1 and math.isfinite(max_epochs)
        ):
            raise AblateError(f"--max-epochs: {show(max_epochs)} (allowed: a number >= 1)")
        epochs = {d: float(max_epochs) for d in domains}
    else:
        epochs = {d: float(body["max_epochs"][d]) for d in domains}
    avail = body["available_tokens"]
    hi = np.array(
        [
            min(1.0, avail[d] * epochs[d] / stage_tokens * slack) if avail[d] else 1.0
            for d in domains
        ]
    )
    pinned = _pins(pins, domains, hi)
    lo = np.zeros(D)
    for d, s in pinned.items():
        lo[domains.index(d)] = hi[domains.index(d)] = s
    if hi.sum() < 1 - 1e-9:
        raise AblateError(
            f"the repetition caps{' and pins' if pinned else ''} allow at most {hi.sum():.4g} of "
            "the stage (raise --max-epochs, or pin less)"
        )
    if lo.sum() > 1 + 1e-9 or (len(pinned) == D and abs(lo.sum() - 1) > 1e-9):
        raise AblateError(
            f"--pin: every domain is pinned and the shares sum to {lo.sum():g}, not 1"
        )
    p = _prior(prior, body)

    def score(W):
        return _predict(fitted, chosen, terms, W)[0] + const - kl * _kl(W, p)

    rng = np.random.default_rng(seed)
    draws = rng.dirichlet(np.maximum(p * 2 * D, 0.05), size=N_DRAWS)
    cands = project(np.vstack([p, np.full(D, 1 / D), draws]), lo, hi)
    values = score(cands)
    best_i = np.argsort(-values, kind="stable")[:N_STARTS]
    best_w, best_v = cands[best_i[0]], values[best_i[0]]
    free = hi > lo
    for i in best_i:
        res = minimize(
            lambda w: -score(w[None])[0],
            cands[i],
            method="SLSQP",
            bounds=list(zip(lo, hi)),
            constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1.0}],
            options={"maxiter": 200, "ftol": 1e-10},
        )
        w = project(res.x, lo, hi)[0]
        v = score(w[None])[0]
        if v > best_v + 1e-12 and free.any():
            best_w, best_v = w, v
    best_w = np.where(best_w < 1e-6, 0.0, best_w)
    best_w = project(best_w, lo, hi)[0]
    mean, std = _predict(fitted, chosen, terms, best_w[None])
    tokens = _tokens(best_w, stage_tokens)

    stage = recipe["stages"][body["stage_index"]]
    stage["mix"] = {
        d: {"tokens": n, "max_epochs": epochs[d]} for d, n in zip(domains, tokens) if n > 0
    }
    stage["tokens"] = int(sum(tokens))
    recipe["name"] = name or f"{body['base_run']}-mix"
    recipe.pop("run_dir", None)  # runs/<name>, not the base run's directory
    result = {
        "weights": {d: float(w) for d, w in zip(domains, best_w)},
        "prior": {d: float(x) for d, x in zip(domains, p)},
        "caps": {d: float(x) for d, x in zip(domains, hi)},
        "predicted": float(mean[0] + const),
        "std": float(std[0]),
        "kl": float(_kl(best_w[None], p)[0]),
        "objective": terms,
        "recipe": recipe,
    }
    if out is not None:
        import yaml

        from ablate.io import write_text_atomic

        head = (
            f"# ablate mix propose: stage {body['stage']!r} of {body['base_run']}, objective "
            f"{objective.strip()}\n# predicted {result['predicted']:.6g} +- {result['std']:.3g} "
            f"(kl {kl:g}, prior {prior}); shares: "
            + ", ".join(f"{d} {w:.4f}" for d, w in result["weights"].items())
            + "\n"
        )
        write_text_atomic(out, head + yaml.safe_dump(recipe, sort_keys=False))
    return result


def summary(result) -> str:
    lines = [f"predicted objective: {result['predicted']:.6g} +- {result['std']:.3g} (1 sd)"]
    lines.append(f"{'domain':<28}{'share':>9}{'prior':>9}{'cap':>9}")
    for d, w in result["weights"].items():
        lines.append(f"{d:<28}{w:>9.4f}{result['prior'][d]:>9.4f}{result['caps'][d]:>9.4f}")
    return "\n".join(lines)
