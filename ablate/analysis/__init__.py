"""Pure functions over run directories: tables, statistics, routing metrics, plots.

Import the package and use the names below (each module loads on first use, so ``ablate
--help`` stays fast)::

    import ablate.analysis as A
    runs = A.load_runs("runs/*")
    frame = A.runs_frame(runs)                       # one row per run, every recipe field a column
    scores = A.scores_frame(runs, frame)             # capability scores, tidy
    cmp = A.compare(scores, control="baseline")     # deltas, bootstrap CIs, within-noise flags
    m = runs[0].routing().metrics()                  # routing metrics per flush window

Modules: ``runs`` (registry), ``capability``, ``routing_store`` (columnar routing logs),
``routing_metrics`` (ANALYSIS_METRICS.md), ``routing_compare`` (across runs), ``eval_routing``,
``plots``, ``report`` (its HTML pieces in ``report_html``, routing sections in
``report_routing``).
"""

import importlib

_EXPORTS = {
    "runs": (
        "Run",
        "load_run",
        "load_runs",
        "runs_frame",
        "metrics_frame",
        "varying_columns",
        "differences",
        "resolve_control",
        "flatten",
        "condition_labels",
        "join_recipe",
    ),
    "capability": (
        "scores_frame",
        "summary",
        "compare",
        "capability_table",
        "interaction_table",
        "data_changes",
        "bootstrap_ci",
        "t_ci",
        "lower_is_better",
    ),
    "routing_store": ("RoutingLog", "EvalRouting", "load_routing", "load_eval_routing"),
    "routing_metrics": (
        "RoutingMetrics",
        "routing_metrics",
        "specialization",
        "routing_distribution",
        "lift",
        "normalized_entropy",
        "js_divergence",
        "js_matrix",
        "expert_load",
        "load_cv",
        "max_violation",
        "shared_exclusive",
        "experts_to_cover",
        "sorted_profile",
        "coactivation",
        "coactivation_conditional",
        "router_saturation",
        "vocab_specialization",
        "timeseries_frame",
    ),
    "routing_compare": (
        "comparable_domains",
        "compare_routing",
        "align_experts",
        "aligned_comparison",
        "permute_experts",
        "same_initialization",
        "shared_exclusive_frame",
        "invariant_profile",
    ),
    "eval_routing": ("saturation_frame", "vocab_frame", "vocab_summary"),
    "report": ("build_report",),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE) + sorted(_EXPORTS)


def __getattr__(name):
    if name in _WHERE:
        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    if name in _EXPORTS or name == "plots":
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
