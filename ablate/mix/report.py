"""``fit.html``: the page ``ablate mix fit`` writes, in the style of ``ablate report`` (its CSS,
tables and embedded PNG figures): the verdicts, predicted vs observed out of fold, per-domain
partial effects and the log-linear domain-interaction matrix."""

from __future__ import annotations

import html

import numpy as np
from matplotlib.figure import Figure

from ablate.analysis.report_html import CSS, img, table


def partial_effects(model, prior_D, d: int, caps_D=None, points: int = 21):
    """``(share_S, mean_S)``: domain ``d``'s share swept from 0 to its cap, the other domains
    keeping the prior's proportions among themselves."""
    prior = np.asarray(prior_D, float)
    top = 1.0 if caps_D is None else float(min(1.0, caps_D[d]))
    s = np.linspace(0.0, top, points)
    rest = prior.copy()
    rest[d] = 0.0
    rest = rest / rest.sum() if rest.sum() > 0 else np.full_like(rest, 1 / (len(rest) - 1))
    rest[d] = 0.0
    W = (1 - s)[:, None] * rest[None, :]
    W[:, d] = s
    return s, model.predict(W)[0]


def _panels(n: int, w: float = 3.4, h: float = 3.0, cols_max: int = 4):
    cols = min(n, cols_max)
    rows = -(-n // cols)
    fig = Figure(figsize=(w * cols, h * rows), layout="constrained")
    return fig, [fig.add_subplot(rows, cols, i + 1) for i in range(n)]


def fig_oof(body) -> Figure:
    targets = body["targets"]
    fig, axes = _panels(len(targets))
    for ax, t in zip(axes, targets):
        chosen = body["metrics"][t]["chosen"]
        y = np.array([r["scores"][t] for r in body["table"]])
        p = np.array([r["oof"][chosen][t] for r in body["table"]])
        ax.scatter(y, p, s=10, alpha=0.7)
        lo, hi = min(y.min(), p.min()), max(y.max(), p.max())
        ax.plot([lo, hi], [lo, hi], color="#888", lw=1)
        ax.set_title(f"{t}\n{chosen}: {body['metrics'][t]['verdict']}", fontsize=9)
        ax.set_xlabel("observed")
        ax.set_ylabel("predicted (out of fold)")
    return fig


def fig_partial(body, fitted) -> Figure:
    from ablate.analysis.plots import domain_colors

    targets, domains = body["targets"], body["domains"]
    prior = np.array([body["prior_tokens"][d] for d in domains])
    caps = np.array([body["caps"][d] for d in domains])
    colors = domain_colors(domains)
    fig, axes = _panels(len(targets))
    for m, (ax, t) in enumerate(zip(axes, targets)):
        model = fitted[body["metrics"][t]["chosen"]][m]
        for d, name in enumerate(domains):
            s, y = partial_effects(model, prior, d, caps)
            ax.plot(s, y, color=colors[name], label=name, lw=1.4)
        ax.set_title(f"{t} ({body['metrics'][t]['chosen']})", fontsize=9)
        ax.set_xlabel("domain share (others: prior ratios)", fontsize=8)
    axes[0].legend(fontsize=7)
    return fig


def fig_interactions(body, fitted) -> Figure | None:
    if "loglinear" not in fitted or not body["interactions"]:
        return None
    targets, domains = body["targets"], body["domains"]
    fig, axes = _panels(len(targets), w=3.8, h=3.4)
    for m, (ax, t) in enumerate(zip(axes, targets)):
        C = fitted["loglinear"][m].interaction_matrix(len(domains))
        v = float(np.abs(C).max()) or 1.0
        im = ax.imshow(C, cmap="RdBu_r", vmin=-v, vmax=v)
        ax.set_xticks(range(len(domains)), domains, rotation=90, fontsize=7)
        ax.set_yticks(range(len(domains)), domains, fontsize=7)
        ax.set_title(f"{t}: c_de", fontsize=9)
        fig.colorbar(im, ax=ax, shrink=0.7)
    return fig


def fit_html(body, fitted) -> str:
    import pandas as pd

    rows = []
    for t in body["targets"]:
        e = body["metrics"][t]
        row = {"metric": t, "chosen": e["chosen"], "verdict": e["verdict"]}
        for n in body["models"]:
            row[f"{n} OOF RMSE"] = e["models"][n]["oof_rmse"]
            row[f"{n} Spearman"] = e["models"][n]["spearman"]
        row["mean predictor RMSE"] = e["baseline_rmse"]
        row["seed-noise floor"] = e["noise_floor"]
        rows.append(row)
    summary = pd.DataFrame(rows)
    classes = summary.copy().astype(object)
    classes.loc[:, :] = ""
    classes["verdict"] = ["noise" if v != "fits" else "better" for v in summary["verdict"]]
    caps = pd.DataFrame(
        {
            "domain": body["domains"],
            "available tokens": [body["available_tokens"][d] for d in body["domains"]],
            "max_epochs": [body["max_epochs"][d] for d in body["domains"]],
            "max share": [body["caps"][d] for d in body["domains"]],
            "prior (tokens)": [body["prior_tokens"][d] for d in body["domains"]],
        }
    )
    runs = pd.DataFrame(
        [{"run": r["run"], "seed": r["seed"], **r["weights"], **r["scores"]} for r in body["table"]]
    )
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>mixture fit</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>Mixture fit: stage {html.escape(body['stage'])}</h1>",
        f"<p class='meta'>{len(body['table'])} runs, {len(body['domains'])} domains, "
        f"{body['folds']}-fold out-of-fold validation (folds over mixtures, seed {body['seed']}); "
        f"log-linear interactions: {'on' if body['interactions'] else 'off'}; base recipe: "
        f"{html.escape(body['base_run'])}</p>",
        "<h2>Verdicts</h2>",
        "<p class='note'>no better than noise: "
        f"{html.escape(body['rules']['no_better_than_noise'])}."
        f" Chosen: {html.escape(body['rules']['chosen'])}. Seed-noise floor: "
        f"{html.escape(body['rules']['noise_floor'])} (a perfect law's OOF RMSE sits at it).</p>",
        table(summary, classes=classes, left=("metric", "chosen", "verdict")),
        "<h2>Predicted vs observed (out of fold, chosen model)</h2>",
        img(fig_oof(body), "predicted vs observed"),
        "<h2>Per-domain partial effects</h2>",
        "<p class='note'>Each domain's share swept from 0 to its repetition cap; the other domains "
        "keep the prior's (token) proportions.</p>",
        img(fig_partial(body, fitted), "partial effects"),
    ]
    inter = fig_interactions(body, fitted)
    if inter is not None:
        parts += [
            "<h2>Domain interactions (log-linear c<sub>de</sub>)</h2>",
            img(inter, "interaction matrix"),
        ]
    parts += [
        "<h2>Repetition caps</h2>",
        table(caps, left=("domain",)),
        "<h2>Runs</h2>",
        table(runs, left=("run",)),
        "</body></html>",
    ]
    return "\n".join(parts)
