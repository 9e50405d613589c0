"""Figures (matplotlib, object API: no pyplot state, no GUI backend; each function returns a
``matplotlib.figure.Figure`` that notebooks display and the report embeds as PNG)."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ablate.run_layout import domain_of_tokens_key

_VERDICT_COLOR = {
    "better": "#2a9d5c",
    "worse": "#c8553d",
    "noise": "#9aa0a6",
    "1 seed": "#6c8ebf",
    "mixed": "#d4a017",
}


def domain_colors(domains) -> dict:
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if len(domains) <= 10 else "tab20"]
    return {d: cmap(i % cmap.N) for i, d in enumerate(sorted(domains))}


def _stage_spans(m):
    """``[(stage, first step, last step)]`` from a metrics frame, in order."""
    spans = []
    if "stage" not in m:
        return spans
    for stage, step in zip(m["stage"], m["step"]):
        if spans and spans[-1][0] == stage:
            spans[-1][2] = step
        else:
            spans.append([stage, step, step])
    return spans


def _shade_stages(ax, spans, label=True):
    for i, (stage, a, b) in enumerate(spans):
        if i % 2:
            ax.axvspan(a - 0.5, b + 0.5, color="0.93", zorder=0)
        if i:
            ax.axvline(a - 0.5, color="0.6", lw=0.8, ls="--")
        if label:
            ax.text(
                (a + b) / 2,
                0.98,
                stage,
                transform=ax.get_xaxis_transform(),
                ha="center",
                va="top",
                fontsize=8,
                color="0.35",
            )


def plot_training_curves(metrics, title: str = "") -> Figure:
    """One run: loss (total and per domain) and cumulative tokens per domain against step, with
    stages shaded."""
    m = metrics.sort_values("step")
    domains = sorted(domain_of_tokens_key(c) for c in m.columns if domain_of_tokens_key(c))
    colors = domain_colors(domains)
    fig = Figure(figsize=(11, 3.6))
    fig.subplots_adjust(left=0.06, right=0.99, bottom=0.14, top=0.84 if title else 0.9, wspace=0.2)
    ax1, ax2 = fig.subplots(1, 2)
    spans = _stage_spans(m)
    ax1.plot(m["step"], m["loss"], color="black", lw=1.8, label="all")
    for d in domains:
        col = f"loss/{d}"
        if col in m and m[col].notna().any():
            ax1.plot(m["step"], m[col].astype(float), color=colors[d], lw=1, label=d)
    ax1.set(xlabel="step", ylabel="loss", title="loss")
    _shade_stages(ax1, spans)
    ax1.legend(fontsize=7, ncol=2)
    for d in domains:
        ax2.plot(m["step"], m[f"tokens/{d}"], color=colors[d], lw=1.2, label=d)
    ax2.set(xlabel="step", ylabel="tokens (cumulative)", title="tokens per domain")
    _shade_stages(ax2, spans)
    ax2.legend(fontsize=7, ncol=2)
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


def plot_loss_overlay(metrics_all, title: str = "training loss, all runs") -> Figure:
    """Total loss of every run, one colour per condition (seeds share it)."""
    import matplotlib

    fig = Figure(figsize=(11, 3.6))
    fig.subplots_adjust(left=0.06, right=0.99, bottom=0.14, top=0.9)
    ax = fig.subplots()
    conditions = list(dict.fromkeys(metrics_all["condition"]))
    cmap = matplotlib.colormaps["tab10"]
    for run, g in metrics_all.groupby("run", sort=False):
        cond = g["condition"].iloc[0]
        i = conditions.index(cond)
        ax.plot(
            g["step"],
            g["loss"],
            color=cmap(i % 10),
            lw=1.2,
            alpha=0.9,
            label=cond
            if run == metrics_all.loc[metrics_all["condition"] == cond, "run"].iloc[0]
            else None,
        )
    ax.set(xlabel="step", ylabel="loss", title=title)
    ax.legend(fontsize=8)
    return fig


def plot_capability_bars(comparison, max_scores: int = 24) -> Figure:
    """Delta against the control per score (one panel each), a bar per condition with its
    confidence interval; the colour is the verdict (grey: within noise)."""
    scores = list(dict.fromkeys(comparison["score"]))[:max_scores]
    n = max(1, len(scores))
    cols = min(4, n)
    rows = (n + cols - 1) // cols
    fig = Figure(figsize=(3.2 * cols, 2.6 * rows + 0.4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax, score in zip(axes, scores):
        s = comparison[comparison["score"] == score]
        x = np.arange(len(s))
        ax.bar(x, s["delta"], color=[_VERDICT_COLOR.get(v, "0.5") for v in s["verdict"]])
        lo, hi = s["lo"].to_numpy(float), s["hi"].to_numpy(float)
        ok = ~np.isnan(lo)
        d = s["delta"].to_numpy(float)
        ax.errorbar(
            x[ok],
            d[ok],
            yerr=[np.maximum(d[ok] - lo[ok], 0), np.maximum(hi[ok] - d[ok], 0)],
            fmt="none",
            ecolor="black",
            capsize=3,
            lw=1,
        )
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xticks(x, s["condition"], rotation=30, ha="right", fontsize=7)
        arrow = "↓ better" if s["lower_is_better"].iloc[0] else "↑ better"
        ax.set_title(f"{score}\nΔ vs control ({arrow})", fontsize=8)
        ax.tick_params(axis="y", labelsize=7)
    for ax in axes[len(scores) :]:
        ax.set_axis_off()
    return fig


def _layers_to_show(L: int, max_layers: int) -> list[int]:
    if L <= max_layers:
        return list(range(L))
    return sorted(set(np.linspace(0, L - 1, max_layers).round().astype(int).tolist()))


def plot_expert_heatmaps(
    S_LDE,
    domains,
    title: str = "",
    k: int | None = None,
    max_layers: int = 8,
    value: str = "specialization",
) -> Figure:
    """Domain x expert heatmap per layer (``value`` names the colour scale; specialization S by
    default, uniform routing = k/E)."""
    S = np.asarray(S_LDE, float)
    L, D, E = S.shape
    layers = _layers_to_show(L, max_layers)
    cols = min(4, len(layers))
    rows = (len(layers) + cols - 1) // cols
    fig = Figure(
        figsize=(min(3.4 * cols, 14) + 0.8, (0.28 * D + 1.0) * rows + 0.6), layout="constrained"
    )
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    vmax = np.nanmax(S) if np.isfinite(S).any() else 1.0
    im = None
    for ax, layer in zip(axes, layers):
        im = ax.imshow(
            S[layer], aspect="auto", cmap="viridis", vmin=0, vmax=vmax, interpolation="nearest"
        )
        ax.set_title(f"layer {layer}", fontsize=8)
        ax.set_yticks(range(D), domains if ax in axes[::cols] else [], fontsize=7)
        ax.set_xlabel("expert", fontsize=7)
        ax.xaxis.set_major_locator(MaxNLocator(nbins=8, integer=True))
        ax.tick_params(axis="x", labelsize=6)
    for ax in axes[len(layers) :]:
        ax.set_axis_off()
    if im is not None:
        cb = fig.colorbar(im, ax=axes[: len(layers)].tolist(), shrink=0.8)
        cb.set_label(value + (f" (uniform {k / E:.2f})" if k else ""), fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def plot_js_pair(js_a_LDD, js_b_LDD, domains, names=("a", "b"), layer: int | None = None) -> Figure:
    """JS divergence matrices of two runs side by side (same colour scale), and b - a.
    ``layer=None`` averages over layers."""
    A, B = np.asarray(js_a_LDD, float), np.asarray(js_b_LDD, float)
    A2 = np.nanmean(A, axis=0) if layer is None else A[layer]
    B2 = np.nanmean(B, axis=0) if layer is None else B[layer]
    fig = Figure(figsize=(12, 3.9), layout="constrained")
    axes = fig.subplots(1, 3)
    vmax = max(
        np.nanmax(A2) if np.isfinite(A2).any() else 0,
        np.nanmax(B2) if np.isfinite(B2).any() else 0,
        1e-6,
    )
    where = "mean over layers" if layer is None else f"layer {layer}"
    for ax, M, name in ((axes[0], A2, names[0]), (axes[1], B2, names[1])):
        im = ax.imshow(M, cmap="magma", vmin=0, vmax=vmax)
        ax.set_title(f"{name}: JS (bits), {where}", fontsize=9)
        _domain_ticks(ax, domains)
    fig.colorbar(im, ax=axes[:2].tolist(), shrink=0.8)
    diff = B2 - A2
    lim = max(np.nanmax(np.abs(diff)) if np.isfinite(diff).any() else 0, 1e-6)
    im = axes[2].imshow(diff, cmap="RdBu_r", vmin=-lim, vmax=lim)
    axes[2].set_title(f"{names[1]} − {names[0]}", fontsize=9)
    _domain_ticks(axes[2], domains)
    fig.colorbar(im, ax=axes[2], shrink=0.8)
    return fig


def _domain_ticks(ax, domains):
    ax.set_xticks(range(len(domains)), domains, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(len(domains)), domains, fontsize=7)


def plot_specialization_over_training(m, title: str = "") -> Figure:
    """From ``RoutingMetrics``: per domain, the top expert's specialization (max_e S, mean over
    layers) and the normalised entropy of its routing, against step; dashed: uniform routing."""
    import warnings

    steps = np.asarray(m.steps_F)
    colors = domain_colors(m.domains)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a domain absent from a window: NaN
        peak_FD = np.nanmean(m.peak_FLD(), axis=1)
        H_FD = np.nanmean(m.H_FLD, axis=1)
    E = m.load_FLE.shape[-1]
    fig = Figure(figsize=(11, 3.4))
    fig.subplots_adjust(left=0.07, right=0.99, bottom=0.15, top=0.84 if title else 0.9, wspace=0.22)
    ax1, ax2 = fig.subplots(1, 2)
    for i, d in enumerate(m.domains):
        ax1.plot(steps, peak_FD[:, i], marker=".", ms=3, lw=1.2, color=colors[d], label=d)
        ax2.plot(steps, H_FD[:, i], marker=".", ms=3, lw=1.2, color=colors[d], label=d)
    ax1.axhline(m.k / E, color="0.4", ls="--", lw=0.8)
    ax2.axhline(1.0, color="0.4", ls="--", lw=0.8)
    kind = "running total" if m.cumulative else "per flush window"
    ax1.set(
        xlabel="step", ylabel="max_e S(l, d, e), mean over layers", title=f"specialization ({kind})"
    )
    ax2.set(xlabel="step", ylabel="normalised entropy", title=f"routing entropy ({kind})")
    ax1.legend(fontsize=7, ncol=2)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def plot_coactivation(P_LEE, layer: int = 0, title: str = "") -> Figure:
    """P(j | i) = C_ij / C_ii for one layer."""
    P = np.asarray(P_LEE, float)[layer]
    fig = Figure(figsize=(4.6, 4), layout="constrained")
    ax = fig.subplots()
    im = ax.imshow(P, cmap="viridis", vmin=0, vmax=1)
    ax.set(xlabel="expert j", ylabel="expert i", title=title or f"P(j | i), layer {layer}")
    ax.xaxis.set_major_locator(MaxNLocator(nbins=8, integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(nbins=8, integer=True))
    fig.colorbar(im, ax=ax, shrink=0.8)
    return fig


def plot_saturation(frame, title: str = "router saturation against the final checkpoint") -> Figure:
    """Saturation per checkpoint (domain ``all``), one line per layer."""
    f = frame[frame["domain"] == "all"]
    fig = Figure(figsize=(6, 3.2))
    fig.subplots_adjust(left=0.12, right=0.97, bottom=0.16, top=0.9)
    ax = fig.subplots()
    for layer, g in f.groupby("layer"):
        ax.plot(g["step"], g["saturation"], marker="o", ms=3, label=f"layer {layer}")
    ax.set(xlabel="checkpoint step", ylabel="mean |S_t ∩ S_final| / k", title=title, ylim=(0, 1.05))
    ax.legend(fontsize=7)
    return fig


def _panels(n: int, cols_max: int = 4, w: float = 3.2, h: float = 2.6):
    n = max(1, n)
    cols = min(cols_max, n)
    rows = (n + cols - 1) // cols
    fig = Figure(figsize=(w * cols, h * rows + 0.4), layout="constrained")
    return fig, np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()


def plot_verdict_bars(verdicts, max_scores: int = 24) -> Figure:
    """Δ against the control per score, a bar per condition: the raw interval (thin, capped) and
    the multiplicity-adjusted one (thick, light); the colour is the verdict after correction."""
    scores = list(dict.fromkeys(verdicts["score"]))[:max_scores]
    fig, axes = _panels(len(scores))
    for ax, score in zip(axes, scores):
        s = verdicts[verdicts["score"] == score]
        x = np.arange(len(s))
        d = s["delta"].to_numpy(float)
        ax.bar(x, d, color=[_VERDICT_COLOR.get(v, "0.5") for v in s["verdict_adj"]], width=0.6)
        for lo_c, hi_c, lw, color, cap in (
            ("lo_adj", "hi_adj", 5, "#00000040", 0),
            ("lo", "hi", 1, "black", 3),
        ):
            lo, hi = s[lo_c].to_numpy(float), s[hi_c].to_numpy(float)
            ok = ~np.isnan(lo)
            ax.errorbar(
                x[ok],
                d[ok],
                yerr=[np.maximum(d[ok] - lo[ok], 0), np.maximum(hi[ok] - d[ok], 0)],
                fmt="none",
                ecolor=color,
                elinewidth=lw,
                capsize=cap,
            )
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xticks(x, s["condition"], rotation=30, ha="right", fontsize=7)
        arrow = "↓ better" if s["lower_is_better"].iloc[0] else "↑ better"
        ax.set_title(f"{score}\nΔ vs control ({arrow})", fontsize=8)
        ax.tick_params(axis="y", labelsize=7)
    for ax in axes[len(scores) :]:
        ax.set_axis_off()
    if len(verdicts):
        fig.suptitle(
            f"thin: raw {verdicts.attrs.get('ci', 0.95):.0%} interval; thick: adjusted "
            f"({verdicts.attrs.get('correction', '')}, family of "
            f"{verdicts.attrs.get('family_size', '?')}); colour: verdict after correction",
            fontsize=8,
        )
    return fig


def plot_learning_curves(curves, scores, title: str = "") -> Figure:
    """Each score against tokens trained, one line per condition (mean over seeds), the band
    spanning its seeds' lowest and highest values."""
    fig, axes = _panels(len(scores))
    conditions = list(dict.fromkeys(curves["condition"]))
    colors = {c: f"C{i % 10}" for i, c in enumerate(conditions)}
    for ax, score in zip(axes, scores):
        s = curves[curves["score"] == score]
        for cond, g in s.groupby("condition", sort=False):
            by = g.groupby("tokens")["value"]
            t = by.mean().index.to_numpy(float) / 1e6
            ax.plot(t, by.mean().to_numpy(), color=colors[cond], label=cond, lw=1.4)
            ax.fill_between(
                t, by.min().to_numpy(), by.max().to_numpy(), color=colors[cond], alpha=0.15
            )
        ax.set_title(score, fontsize=8)
        ax.set_xlabel("tokens trained (M)", fontsize=7)
        ax.tick_params(labelsize=7)
    for ax in axes[len(scores) :]:
        ax.set_axis_off()
    if len(scores):
        axes[0].legend(fontsize=6)
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def plot_dose_response(scores, frame, fits, field: str, max_scores: int = 12) -> Figure:
    """Each score against the dose: every run (dots), the mean per dose level (line) and the
    fitted trend (dashed), titled with the slope, its interval and the monotonicity verdict."""
    shown = fits.head(max_scores)
    fig, axes = _panels(len(shown))
    dose = dict(zip(frame["run"], frame[field]))
    for ax, f in zip(axes, shown.itertuples(index=False)):
        s = scores[scores["score"] == f.score]
        ax.scatter([float(dose[r]) for r in s["run"]], s["value"], s=10, color="0.5")
        ax.plot(f.levels, f.means, color="C0", lw=1.4, marker="o", ms=3)
        ax.plot(f.levels, f.fitted, color="C3", lw=1, ls="--")
        ax.set_title(
            f"{f.score}\n{f.kind} slope {f.slope:+.3g} [{f.lo:+.3g}, {f.hi:+.3g}]: "
            f"{f.monotonicity}",
            fontsize=7,
        )
        ax.set_xlabel(field.split(".")[-1] if "." in field else field, fontsize=7)
        ax.tick_params(labelsize=7)
    for ax in axes[len(shown) :]:
        ax.set_axis_off()
    return fig
