"""Regressors from mixture weights to one score, behind one small interface:
``fit(W_ND, y_N) -> self`` and ``predict(W_ND) -> (mean_N, std_N)``.

- ``LogLinear``: ``y ~ a + sum_d b_d log(w_d + EPS) + sum_{d<e} c_de w_d w_e`` (the interactions
  optional), fitted by ``scipy.optimize.least_squares`` with the ``soft_l1`` loss: a robust loss
  grows linearly, not quadratically, beyond ``f_scale`` (the residuals' robust scale, 1.4826 x
  their median absolute deviation from an ordinary least-squares start), so a crashed or diverged
  run moves the coefficients far less than under plain least squares. Its std is that scale.
- ``BoostedTrees``: gradient-boosted trees, LightGBM's ``LGBMRegressor`` when it is installed
  (RegMix's choice), else scikit-learn's ``HistGradientBoostingRegressor`` (the same histogram
  algorithm, no extra dependency); its std is the spread of an ensemble fitted on bootstrap
  resamples with fixed seeds.
- ``GaussianProcess``: scikit-learn's ``GaussianProcessRegressor`` with a constant x RBF kernel plus
  white noise on the weights; its posterior std is the uncertainty, and the white-noise level it
  learns is its estimate of the seed noise. Fitted on several metrics at once (``fit_many``) the
  kernel's hyperparameters are shared between the (standardised) metrics.

Every model is deterministic given its ``seed``. ``fit_many`` fits one model per column of
``Y_NM``; ``LogLinear`` overrides it to build the design matrix and the least-squares start once for
all metrics.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from ablate.errors import AblateError

EPS = 1e-3  # log(w + EPS): a domain with share 0 stays finite (its log-weight is log 1e-3)
MODEL_NAMES = ("loglinear", "gbm", "gp")


def robust_scale(r_N) -> float:
    """1.4826 x the median absolute deviation (the SD for normal residuals, blind to outliers)."""
    r = np.asarray(r_N, float)
    mad = 1.4826 * float(np.median(np.abs(r - np.median(r)))) if r.size else 0.0
    return mad if mad > 0 else float(np.std(r)) if r.size else 0.0


def pair_indices(D: int):
    return np.triu_indices(D, k=1)


def loglinear_design(W_ND, interactions: bool, eps: float = EPS):
    """``[1, log(w + eps) (D columns), w_d w_e for d < e (D(D-1)/2 columns)]``."""
    W = np.asarray(W_ND, float)
    parts = [np.ones((W.shape[0], 1)), np.log(W + eps)]
    if interactions:
        a, b = pair_indices(W.shape[1])
        parts.append(W[:, a] * W[:, b])
    return np.hstack(parts)


def loglinear_params(D: int, interactions: bool) -> int:
    return 1 + D + (D * (D - 1) // 2 if interactions else 0)


class LogLinear:
    name = "loglinear"

    def __init__(self, interactions: bool = True, eps: float = EPS, seed: int = 0):
        self.interactions, self.eps, self.seed = interactions, eps, seed

    def fit(self, W_ND, y_N):
        X = loglinear_design(W_ND, self.interactions, self.eps)
        theta0 = np.linalg.lstsq(X, np.asarray(y_N, float), rcond=None)[0]
        return self._refine(X, np.asarray(y_N, float), theta0)

    def _refine(self, X_NP, y_N, theta0_P):
        from scipy.optimize import least_squares

        spread = float(np.std(y_N)) or 1.0
        scale = max(robust_scale(y_N - X_NP @ theta0_P), 1e-9 * spread)
        res = least_squares(
            lambda th: X_NP @ th - y_N,
            theta0_P,
            jac=lambda th: X_NP,
            loss="soft_l1",
            f_scale=scale,
            method="trf",
        )
        self.coef_ = res.x
        self.scale_ = max(robust_scale(y_N - X_NP @ res.x), 1e-12)
        return self

    @classmethod
    def fit_many(cls, W_ND, Y_NM, **kw) -> list:
        """One fitted model per column of ``Y_NM``; the design matrix and the least-squares start
        (one ``lstsq`` with M right-hand sides) are shared."""
        proto = cls(**kw)
        X = loglinear_design(W_ND, proto.interactions, proto.eps)
        Y = np.asarray(Y_NM, float)
        theta0_PM = np.linalg.lstsq(X, Y, rcond=None)[0]
        return [cls(**kw)._refine(X, Y[:, m], theta0_PM[:, m]) for m in range(Y.shape[1])]

    def predict(self, W_ND):
        X = loglinear_design(W_ND, self.interactions, self.eps)
        mean = X @ self.coef_
        return mean, np.full(len(mean), self.scale_)

    def coefficients(self, domains) -> dict:
        """``{"intercept": a, "log": {d: b_d}, "interaction": {"d*e": c_de}}``."""
        D = len(domains)
        out = {
            "intercept": float(self.coef_[0]),
            "log": {d: float(b) for d, b in zip(domains, self.coef_[1 : 1 + D])},
            "interaction": {},
        }
        if self.interactions:
            a, b = pair_indices(D)
            for k, (i, j) in enumerate(zip(a, b)):
                out["interaction"][f"{domains[i]}*{domains[j]}"] = float(self.coef_[1 + D + k])
        return out

    def interaction_matrix(self, D: int):
        """``c_DD``: symmetric, zero diagonal (zeros without interactions)."""
        C = np.zeros((D, D))
        if self.interactions:
            a, b = pair_indices(D)
            C[a, b] = C[b, a] = self.coef_[1 + D :]
        return C


def _boosted_regressor(seed: int, n: int):
    leaf = max(2, min(20, n // 10))
    try:
        from lightgbm import LGBMRegressor
    except ImportError:
        from sklearn.ensemble import HistGradientBoostingRegressor

        return HistGradientBoostingRegressor(
            max_iter=150,
            learning_rate=0.05,
            max_leaf_nodes=15,
            min_samples_leaf=leaf,
            early_stopping=False,
            random_state=seed,
        )
    return LGBMRegressor(
        n_estimators=150,
        learning_rate=0.05,
        num_leaves=15,
        min_child_samples=leaf,
        random_state=seed,
        # one thread: on a few hundred rows threads only contend (a shared 2-core machine ran
        # 100x slower with LightGBM's default of every core); deterministic row-wise histograms
        n_jobs=1,
        deterministic=True,
        force_row_wise=True,
        verbose=-1,
    )


class BoostedTrees:
    name = "gbm"

    def __init__(self, n_members: int = 5, seed: int = 0):
        self.n_members, self.seed = n_members, seed

    def fit(self, W_ND, y_N):
        W, y = np.asarray(W_ND, float), np.asarray(y_N, float)
        self.members_ = []
        for k in range(self.n_members):
            if self.n_members == 1:
                idx = np.arange(len(y))
            else:  # a bootstrap resample per member: their spread is the uncertainty
                idx = np.random.default_rng([self.seed, k]).integers(0, len(y), len(y))
            self.members_.append(_boosted_regressor(self.seed + k, len(y)).fit(W[idx], y[idx]))
        if self.n_members == 1:
            self.scale_ = robust_scale(y - self.members_[0].predict(W))
        return self

    @classmethod
    def fit_many(cls, W_ND, Y_NM, **kw) -> list:
        Y = np.asarray(Y_NM, float)
        return [cls(**kw).fit(W_ND, Y[:, m]) for m in range(Y.shape[1])]

    def predict(self, W_ND):
        W = np.asarray(W_ND, float)
        P = np.stack([m.predict(W) for m in self.members_])
        if len(self.members_) == 1:
            return P[0], np.full(W.shape[0], self.scale_)
        return P.mean(0), P.std(0, ddof=1)


class GaussianProcess:
    name = "gp"

    def __init__(self, seed: int = 0):
        self.seed, self.column = seed, None

    @staticmethod
    def _regressor(seed: int):
        from sklearn.gaussian_process import GaussianProcessRegressor
        from sklearn.gaussian_process.kernels import RBF, ConstantKernel, WhiteKernel

        kernel = ConstantKernel(1.0, (1e-3, 1e3)) * RBF(0.3, (1e-3, 1e2)) + WhiteKernel(
            0.1, (1e-8, 1e1)
        )
        # no restarts: the optimiser starts from the kernel above, so the fit is deterministic
        return GaussianProcessRegressor(
            kernel, normalize_y=True, n_restarts_optimizer=0, random_state=seed
        )

    SEARCH_MAX = 256  # runs the kernel's hyperparameter search sees (O(N^3) per step)

    @classmethod
    def _fit(cls, gp, W, Y):
        """Above ``SEARCH_MAX`` runs the hyperparameters are searched on a fixed-seed subsample
        of that many, then the GP is conditioned on every run with that kernel (one
        factorisation): a swarm of 512 costs about a ninth of a full search."""
        from sklearn.base import clone
        from sklearn.exceptions import ConvergenceWarning

        W = np.asarray(W, float)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            if len(W) <= cls.SEARCH_MAX:
                return gp.fit(W, Y)
            rng = np.random.default_rng([gp.random_state or 0, len(W)])
            sub = np.sort(rng.choice(len(W), cls.SEARCH_MAX, replace=False))
            searched = clone(gp).fit(W[sub], Y[sub])
            return gp.set_params(kernel=searched.kernel_, optimizer=None).fit(W, Y)

    def fit(self, W_ND, y_N):
        self.gp_ = self._fit(self._regressor(self.seed), W_ND, np.asarray(y_N, float))
        return self

    @classmethod
    def fit_many(cls, W_ND, Y_NM, **kw) -> list:
        """One GP for all metrics: each metric standardised (``normalize_y``), the kernel's
        length scale and noise-to-signal ratio shared and fitted on the metrics' summed log
        marginal likelihood; the posterior means and stds stay per metric. One hyperparameter
        search instead of M (the GP's cost at 512 runs is the O(N^3) factorisations of that
        search); with one metric it is ``fit``."""
        Y = np.asarray(Y_NM, float)
        if Y.shape[1] == 1:
            return [cls(**kw).fit(W_ND, Y[:, 0])]
        shared = cls._fit(cls._regressor(kw.get("seed", 0)), W_ND, Y)
        out = []
        for m in range(Y.shape[1]):
            model = cls(**kw)
            model.gp_, model.column = shared, m
            out.append(model)
        return out

    def predict(self, W_ND):
        mean, std = self.gp_.predict(np.asarray(W_ND, float), return_std=True)
        if self.column is not None:
            mean, std = mean[:, self.column], std[:, self.column]
        return mean, std


_CLASSES = {"loglinear": LogLinear, "gbm": BoostedTrees, "gp": GaussianProcess}


def model_class(name: str):
    if name not in _CLASSES:
        raise AblateError(f"--models: {name!r} is not a model (allowed: {', '.join(MODEL_NAMES)})")
    return _CLASSES[name]


def model_kwargs(name: str, interactions: bool, seed: int, uncertainty: bool = True) -> dict:
    """Constructor arguments; ``uncertainty=False`` (out-of-fold fits) skips the ensemble."""
    if name == "loglinear":
        return {"interactions": interactions, "seed": seed}
    if name == "gbm":
        return {"n_members": 5 if uncertainty else 1, "seed": seed}
    return {"seed": seed}


def make_model(name: str, interactions: bool = True, seed: int = 0, uncertainty: bool = True):
    return model_class(name)(**model_kwargs(name, interactions, seed, uncertainty))


def runs_needed(name: str, D: int, folds: int, interactions: bool = True) -> tuple[int, str]:
    """The fewest runs ``name`` can be fitted and cross-validated on, and why: every training
    fold (a run set less ``ceil(N / folds)``) must hold more runs than the model has parameters
    (log-linear: 1 + D log-weights + D(D-1)/2 interactions), or at least 8 runs (trees, GP)."""
    if name == "loglinear":
        p = loglinear_params(D, interactions)
        what = f"{p} parameters: 1 + {D} log-weights" + (
            f" + {D * (D - 1) // 2} interactions" if interactions else ""
        )
        need_train = p + 1
    else:
        what = "8 runs in each training fold"
        need_train = 8
    n = need_train
    while n - math.ceil(n / folds) < need_train:
        n += 1
    return max(n, 2 * folds), f"{what}, and {folds} folds"
