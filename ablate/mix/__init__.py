"""Mixture regression: from a sweep over one stage's mix to a better mixture.

``mixture_table`` reads run directories (through ``ablate.analysis``) into mixture weights (the
realised per-domain token shares of the swept stage, from each run's plan.json) and scores;
``models`` holds the regressors (log-linear with a robust loss, gradient boosting, a Gaussian
process); ``validate`` their out-of-fold errors against the seed-noise floor; ``fit`` writes a fit
directory (fit.json, pickled models, fit.html); ``propose`` optimises an objective over the
simplex under repetition caps and pins and writes a recipe ``ablate compile`` takes.

Modules load on first use, so ``ablate --help`` does not import pandas or scikit-learn.
"""

import importlib

_EXPORTS = {
    "table": ("mixture_table",),
    "models": ("LogLinear", "BoostedTrees", "GaussianProcess", "make_model", "MODEL_NAMES"),
    "validate": ("kfold_indices", "noise_floor", "validate_models"),
    "objective": ("parse_objective",),
    "fit": ("fit_mixture", "load_fit"),
    "propose": ("propose_mixture",),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name):
    if name in _WHERE:
        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
