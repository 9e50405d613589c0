"""``ablate mix fit``: the mixture table, validated regressors per metric, and a fit directory.

FIT_DIR holds ``fit.json`` (format ``ablate.mixfit/1``: domains, targets, stage, the table, per
metric per model the out-of-fold errors and verdicts, the chosen model, log-linear coefficients,
the base recipe and each domain's repetition cap as a maximum share), ``models/<model>.pkl`` (the
models fitted on every run, one per target, pickled) and ``fit.html``. It is built in a temporary
directory beside FIT_DIR and renamed into place: a failed fit leaves nothing.
"""

from __future__ import annotations

import json
import os
import pickle
import sys
import time

import numpy as np

from ablate.errors import AblateError, show
from ablate.io import os_errors, remove_path, tmp_name
from ablate.mix.models import MODEL_NAMES, model_class, model_kwargs, runs_needed
from ablate.mix.table import WEIGHT_PREFIX, mixture_table

FIT_FORMAT = "ablate.mixfit/1"


def _models_arg(models) -> list[str]:
    names = [m.strip() for m in (models.split(",") if isinstance(models, str) else models)]
    for n in names:
        model_class(n)
    if not names or len(set(names)) != len(names):
        raise AblateError(
            f"--models: {show(','.join(names))}: give distinct models from {', '.join(MODEL_NAMES)}"
        )
    return names


def _log(progress, text: str) -> None:
    if progress:
        print(text, file=sys.stderr, flush=True)


def fit_mixture(
    runs,
    targets,
    out: str,
    models=("loglinear", "gbm", "gp"),
    folds: int = 5,
    stage: str | None = None,
    overwrite: bool = False,
    seed: int = 0,
    interactions: str = "auto",
    progress: bool = True,
) -> str:
    """Fit and validate; write FIT_DIR ``out``; return its path."""
    models = _models_arg(models)
    out = os.path.normpath(out)
    if os.path.lexists(out) and not overwrite:
        raise AblateError(f"{out}: already exists (give --overwrite to replace it)")
    if not isinstance(folds, int) or folds < 2:
        raise AblateError(f"--folds: {show(folds)} (allowed: an integer of at least 2)")
    if interactions not in ("auto", "on", "off"):
        raise AblateError(f"--interactions: {show(interactions)} (allowed: auto, on, off)")
    W, Y, table = mixture_table(
        runs, targets if not isinstance(targets, str) else targets.split(","), stage
    )
    targets, domains = table.attrs["targets"], table.attrs["domains"]
    N, D = W.shape
    if D < 2:
        raise AblateError(
            f"stage {table.attrs['stage']!r}: one domain ({domains[0]}), no mixture to fit"
        )
    inter = interactions == "on" or (
        interactions == "auto" and N >= runs_needed("loglinear", D, folds, True)[0]
    )
    for name in models:
        need, why = runs_needed(name, D, folds, inter)
        if N < need:
            raise AblateError(
                f"{name} needs at least {need} runs ({why}), got {N}"
                + (" (--interactions off needs fewer)" if name == "loglinear" and inter else "")
            )
    n_mixtures = len({tuple(np.round(w, 9)) for w in W})
    if n_mixtures < folds:
        raise AblateError(
            f"--folds: {folds} folds need at least {folds} distinct mixtures, got {n_mixtures}"
        )

    from ablate.mix.validate import validate_models

    report, oof = validate_models(W, Y, targets, models, folds, seed, inter, progress=progress)
    fitted = {}
    for name in models:
        t0 = time.perf_counter()
        fitted[name] = model_class(name).fit_many(W, Y, **model_kwargs(name, inter, seed))
        _log(progress, f"{name}: final fit on all {N} runs in {time.perf_counter() - t0:.1f} s")

    available = table.attrs["available"]
    total_avail = sum(available.values())
    body = {
        "format": FIT_FORMAT,
        "domains": domains,
        "targets": targets,
        "stage": table.attrs["stage"],
        "stage_index": table.attrs["stage_index"],
        "stage_tokens": table.attrs["stage_tokens"],
        "caps": table.attrs["caps"],
        "available_tokens": available,
        "max_epochs": table.attrs["max_epochs"],
        # the prior "tokens": each domain's share of the tokens its datasets hold
        "prior_tokens": {
            d: (available[d] / total_avail if total_avail else 1 / D) for d in domains
        },
        "models": models,
        "folds": folds,
        "seed": seed,
        "interactions": inter,
        "rules": {
            "no_better_than_noise": "OOF RMSE >= 0.9 x the training-mean predictor's OOF RMSE, "
            "or OOF Spearman rho <= 0 or p > 0.05",
            "chosen": "the model with the lowest OOF RMSE",
            "noise_floor": "pooled SD of runs repeating one mixture with different seeds",
        },
        "metrics": report,
        "loglinear": (
            {t: fitted["loglinear"][m].coefficients(domains) for m, t in enumerate(targets)}
            if "loglinear" in fitted
            else None
        ),
        "table": [
            {
                "run": row["run"],
                "seed": _scalar(row["seed"]),
                "data_seed": _scalar(row["data_seed"]),
                "weights": {d: float(row[WEIGHT_PREFIX + d]) for d in domains},
                "scores": {t: float(row[t]) for t in targets},
                "oof": {n: {t: float(oof[n][i, m]) for m, t in enumerate(targets)} for n in models},
            }
            for i, row in table.reset_index(drop=True).iterrows()
        ],
        "base_run": table.attrs["base_run"],
        "base_recipe": table.attrs["base_recipe"],
    }
    from ablate.mix.report import fit_html

    html = fit_html(body, fitted)
    tmp = tmp_name(out)
    try:
        with os_errors(out):
            os.makedirs(os.path.join(tmp, "models"))
            for name, per_target in fitted.items():
                with open(os.path.join(tmp, "models", f"{name}.pkl"), "wb") as f:
                    pickle.dump({"targets": targets, "models": per_target}, f)
            with open(os.path.join(tmp, "fit.json"), "w", encoding="utf-8") as f:
                json.dump(body, f, indent=1, default=_plain)
                f.write("\n")
            with open(os.path.join(tmp, "fit.html"), "w", encoding="utf-8") as f:
                f.write(html)
            if os.path.lexists(out):  # --overwrite: the old one goes only once the new one is whole
                old = tmp_name(out, "old")
                os.replace(out, old)
                os.replace(tmp, out)
                remove_path(old)
            else:
                os.replace(tmp, out)
    finally:
        remove_path(tmp)
    return out


def _scalar(v):
    return v.item() if isinstance(v, np.generic) else v


def _plain(v):
    if isinstance(v, np.generic):
        return v.item()
    raise TypeError(f"not JSON: {type(v).__name__}")


def load_fit(fit_dir: str):
    """``(body, models)``: fit.json and ``{model: [fitted model per target]}``."""
    path = os.path.join(fit_dir, "fit.json")
    if not os.path.isdir(fit_dir):
        raise AblateError(f"{fit_dir}: no such fit directory (make one with 'ablate mix fit')")
    from ablate.io import read_json

    if not os.path.exists(path):
        raise AblateError(f"{fit_dir}: not a fit directory (no fit.json)")
    body = read_json(path, "mixture fit")
    if not isinstance(body, dict) or body.get("format") != FIT_FORMAT:
        raise AblateError(f"{path}: not a mixture fit (expected format {FIT_FORMAT!r})")
    models = {}
    for name in body["models"]:
        p = os.path.join(fit_dir, "models", f"{name}.pkl")
        try:
            with open(p, "rb") as f:
                models[name] = pickle.load(f)["models"]
        except (OSError, pickle.UnpicklingError, EOFError, KeyError) as exc:
            raise AblateError(f"{p}: unreadable fitted model ({type(exc).__name__})") from None
    return body, models
