"""The mixture table: one row per run, its mixture weights (the swept stage's realised per-domain
token shares, read exactly from plan.json), its seeds and its target scores.

The swept stage is, by default, the only stage whose mix differs between runs. Every other recipe
field must agree between the runs (seeds, names, where files go and logging cadence may differ:
``ablate.analysis.runs.NOT_CONDITION``): a regression over mixtures is only about the mixture when
nothing else moved. Each domain's repetition cap, as a maximum share of the stage, is what the
plan allows: the tokens its datasets hold x the entry's ``max_epochs`` / the stage's tokens.
"""

from __future__ import annotations

import difflib

import numpy as np

from ablate.errors import AblateError, show

WEIGHT_PREFIX = "w/"


def _closest_first(name: str, names) -> list[str]:
    names = sorted(set(map(str, names)))
    close = difflib.get_close_matches(name, names, n=len(names), cutoff=0.0)
    return close or names


def _listing(names, limit: int = 6) -> str:
    names = list(names)
    more = f", ... ({len(names)} in all)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _stage_index(frame, stage: str | None) -> int:
    """The index of the swept stage: the one named ``stage``, else the only one whose mix varies."""
    from ablate.analysis.runs import varying_columns

    n_stages = 1 + max(int(c.split(".")[1]) for c in frame.columns if c.startswith("stages."))
    names = [str(frame[f"stages.{i}.name"].iloc[0]) for i in range(n_stages)]
    if stage is not None:
        if stage not in names:
            raise AblateError(
                f"--stage: {stage!r} is not a stage of the runs (stages: {_listing(names)})"
            )
        return names.index(stage)
    varying = varying_columns(frame)
    swept = [i for i in range(n_stages) if any(c.startswith(f"stages.{i}.mix.") for c in varying)]
    if len(swept) == 1:
        return swept[0]
    if not swept and n_stages == 1:
        return 0
    if not swept:
        raise AblateError(
            f"no stage's mix differs between the runs; name the stage with --stage "
            f"(stages: {_listing(names)})"
        )
    raise AblateError(
        "the mixes of several stages differ between the runs "
        f"({_listing(names[i] for i in swept)}); "
        "a fit sweeps one stage: give --stage, and runs that differ only in its mix"
    )


def _check_only_mix_differs(frame, i: int) -> None:
    from ablate.analysis.runs import _key, varying_columns

    for col in varying_columns(frame):
        if col.startswith(f"stages.{i}.mix."):
            continue
        keys = frame[col].map(_key)
        first = frame["run"].iloc[0]
        other = frame["run"][keys != keys.iloc[0]].iloc[0]
        a = frame.loc[frame["run"] == first, col].iloc[0]
        b = frame.loc[frame["run"] == other, col].iloc[0]
        raise AblateError(
            f"runs differ in {col} ({first}: {show(_plain(a), 30)}, "
            f"{other}: {show(_plain(b), 30)}), "
            f"not only in the mix of stage {frame[f'stages.{i}.name'].iloc[0]!r}; a mixture fit "
            "needs runs that differ in that mix (and seeds) alone"
        )


def _plain(v):
    from ablate.analysis.runs import _norm

    return _norm(v)


def _plan_stage(run, name: str) -> dict:
    plan = run.plan
    for s in plan.get("stages", []):
        if isinstance(s, dict) and s.get("name") == name:
            if not isinstance(s.get("domains"), dict) or not s["domains"]:
                break
            return s
    raise AblateError(
        f"{run.file('plan.json')}: stages: no stage {name!r} with per-domain tokens "
        "(compile the run again with this version of ablate)"
    )


def _stage_caps(runs, stage_i: int, stage_name: str, domains: list[str], stage_tokens: int):
    """Per domain: tokens its datasets hold, its max_epochs and the largest share the stage may
    give it (holdings x max_epochs / stage tokens, at most 1)."""
    from ablate.recipe.schema import DEFAULT_MAX_EPOCHS

    held: dict[str, dict[str, int]] = {d: {} for d in domains}
    epochs: dict[str, float] = {}
    for run in runs:
        mix = run.recipe["stages"][stage_i].get("mix", {})
        for ds in _plan_stage(run, stage_name).get("datasets", []):
            d = ds.get("domain")
            if d not in held:
                continue
            held[d][ds.get("prefix", ds.get("path"))] = int(ds.get("dataset_tokens", 0))
            entry = mix.get(ds.get("selector"), {}) if isinstance(mix, dict) else {}
            cap = entry.get("max_epochs") if isinstance(entry, dict) else None
            epochs[d] = max(
                epochs.get(d, 0.0), float(cap if cap is not None else DEFAULT_MAX_EPOCHS)
            )
    available = {d: sum(held[d].values()) for d in domains}
    max_epochs = {d: epochs.get(d, DEFAULT_MAX_EPOCHS) for d in domains}
    caps = {
        d: (min(1.0, available[d] * max_epochs[d] / stage_tokens) if available[d] else 1.0)
        for d in domains
    }
    return available, max_epochs, caps


def mixture_table(runs, targets, stage: str | None = None):
    """``(weights_ND, scores_NM, frame)`` of ``runs`` (a list of ``Run`` or path/glob patterns)
    for the score names ``targets``. ``frame`` has one row per run (``run``, ``seed``,
    ``data_seed``, ``w/<domain>`` per domain, one column per target); its ``attrs`` hold
    ``domains``, ``targets``, ``stage``, ``stage_tokens``, ``available`` (tokens per domain),
    ``max_epochs`` and ``caps`` (max share per domain), ``base_run`` and ``base_recipe``."""
    import pandas as pd

    from ablate.analysis.capability import scores_frame
    from ablate.analysis.runs import load_runs, runs_frame

    if not runs or isinstance(runs, str) or not hasattr(runs[0], "plan"):
        runs = load_runs(runs)
    targets = [t.strip() for t in ([targets] if isinstance(targets, str) else targets)]
    if not targets or any(not t for t in targets):
        raise AblateError("--target: give one or more score names, comma-separated")
    frame = runs_frame(runs)
    i = _stage_index(frame, stage)
    stage_name = str(frame[f"stages.{i}.name"].iloc[0])
    _check_only_mix_differs(frame, i)

    shares = []
    for run in runs:
        tok = {
            d: int(v["tokens_realized"]) for d, v in _plan_stage(run, stage_name)["domains"].items()
        }
        total = sum(tok.values())
        if total <= 0:
            raise AblateError(f"{run.file('plan.json')}: stage {stage_name!r} realises no tokens")
        shares.append({d: t / total for d, t in tok.items()})
    domains = sorted({d for s in shares for d in s})
    weights_ND = np.array([[s.get(d, 0.0) for d in domains] for s in shares])

    scores = scores_frame(runs, frame)
    have = sorted(set(scores["score"])) if len(scores) else []
    for t in targets:
        if t not in have:
            raise AblateError(
                f"--target: no run has a score {t!r} (scores: "
                f"{_listing(_closest_first(t, have)) if have else 'none: run ablate eval first'})"
            )
    wide = scores[scores["score"].isin(targets)].pivot_table(
        index="run", columns="score", values="value", aggfunc="last"
    )
    names = [r.name for r in runs]
    for name in names:
        for t in targets:
            if name not in wide.index or not np.isfinite(wide.at[name, t]):
                raise AblateError(
                    f"run {name} has no score {t!r} (evaluate it, or leave it out of the runs)"
                )
    scores_NM = wide.loc[names, targets].to_numpy(dtype=float)

    base = runs[0]
    plan_stage = _plan_stage(base, stage_name)
    stage_tokens = int(plan_stage.get("tokens_nominal", plan_stage.get("tokens", 0)))
    if stage_tokens <= 0:
        raise AblateError(f"{base.file('plan.json')}: stage {stage_name!r} has no token budget")
    available, max_epochs, caps = _stage_caps(runs, i, stage_name, domains, stage_tokens)

    out = pd.DataFrame(
        {"run": names, "seed": frame["seed"].to_numpy(), "data_seed": frame["data_seed"].to_numpy()}
    )
    for j, d in enumerate(domains):
        out[WEIGHT_PREFIX + d] = weights_ND[:, j]
    for m, t in enumerate(targets):
        out[t] = scores_NM[:, m]
    out.attrs.update(
        domains=domains,
        targets=targets,
        stage=stage_name,
        stage_index=i,
        stage_tokens=stage_tokens,
        available=available,
        max_epochs=max_epochs,
        caps=caps,
        base_run=base.name,
        base_recipe=base.recipe,
    )
    return weights_ND, scores_NM, out
