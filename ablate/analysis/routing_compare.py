"""Comparing routing across runs.

Expert ids of independently trained runs are arbitrary, so cross-run comparisons use quantities
that do not depend on numbering: JS matrices between domains, sorted specialization profiles,
normalised entropy, load CV and MaxVio, the number of experts covering half a domain's routing,
and counts of shared / exclusive experts. Runs from one initialisation (same seed and model)
can also be compared expert by expert after a Hungarian match of their per-domain profiles
(``align_experts``).

Comparisons need the same MoE layers and the same domains (a different taxonomy cannot be
lined up); both are checked and refused with one line. ``domains=`` restricts a comparison to
domains both runs routed.
"""

from __future__ import annotations

import numpy as np

from ablate.analysis import routing_metrics as rm
from ablate.errors import AblateError


def comparable_domains(a, b, domains=None) -> list[str]:
    """The domains to compare two routing logs (``RoutingLog`` or ``EvalRouting``) on.

    Same number of MoE layers, and the same domain set unless ``domains`` names a subset both
    have; otherwise an ``AblateError`` that says what differs.
    """
    la, lb = a.num_layers, b.num_layers
    name_a, name_b = (
        getattr(a, "run", getattr(a, "path", "a")),
        getattr(b, "run", getattr(b, "path", "b")),
    )
    if la != lb:
        raise AblateError(
            f"{name_a} has {la} MoE layers and {name_b} has {lb}: layers cannot be compared one to "
            "one"
        )
    if domains is not None:
        for log, name in ((a, name_a), (b, name_b)):
            missing = [d for d in domains if d not in log.domains]
            if missing:
                raise AblateError(
                    f"{name} routed no {', '.join(missing)} (it has {', '.join(log.domains)})"
                )
        return list(domains)
    if set(a.domains) != set(b.domains):
        only_a = sorted(set(a.domains) - set(b.domains))
        only_b = sorted(set(b.domains) - set(a.domains))
        common = [d for d in a.domains if d in b.domains]
        raise AblateError(
            f"{name_a} and {name_b} routed different domains (only {name_a}: "
            f"{', '.join(only_a) or '-'}; "
            f"only {name_b}: {', '.join(only_b) or '-'}): different taxonomies cannot be compared "
            f"domain by domain"
            + (
                f"; pass domains= to compare the common ones ({', '.join(common)})"
                if common
                else ""
            )
        )
    return list(a.domains)


def invariant_profile(count_LDE, ntok_LD, k: int) -> dict:
    """Numbering-free description of one run's routing (whole-run totals): per layer and domain
    ``entropy_LD``, ``cover50_LD``, ``sorted_S_LDE`` (specialization, high to low); per layer
    ``js_LDD``, ``cv_L``, ``maxvio_L``."""
    p = rm.routing_distribution(count_LDE, ntok_LD, k)
    load = rm.expert_load(count_LDE)
    return {
        "entropy_LD": rm.normalized_entropy(p),
        "cover50_LD": rm.experts_to_cover(p, 0.5),
        "sorted_S_LDE": rm.sorted_profile(rm.specialization(count_LDE, ntok_LD)),
        "js_LDD": rm.js_matrix(p),
        "cv_L": rm.load_cv(load),
        "maxvio_L": rm.max_violation(load),
    }


def _totals(log, domains):
    log = log.select_domains(domains)
    count, ntok = log.total()
    return count, ntok


def compare_routing(a, b, domains=None):
    """Per MoE layer, how two runs' routing differs in numbering-free terms (whole-run totals).

    Columns: ``js_distance`` (mean |JS_a - JS_b| over domain pairs), ``profile_l1`` (mean over
    domains of the L1 distance of sorted specialization profiles, divided by k), entropy, CV,
    MaxVio and experts-for-50% of each run (``_a`` / ``_b``) averaged over domains.
    """
    import pandas as pd

    domains = comparable_domains(a, b, domains)
    if a.k != b.k:
        raise AblateError(
            f"{a.run} routes top-{a.k} and {b.run} top-{b.k}: distributions are comparable, "
            "specializations not"
        )
    pa = invariant_profile(*_totals(a, domains), a.k)
    pb = invariant_profile(*_totals(b, domains), b.k)
    iu = np.triu_indices(len(domains), 1)
    E = min(pa["sorted_S_LDE"].shape[-1], pb["sorted_S_LDE"].shape[-1])
    rows = []
    for layer in range(a.num_layers):
        js_a, js_b = pa["js_LDD"][layer][iu], pb["js_LDD"][layer][iu]
        prof = (
            np.abs(pa["sorted_S_LDE"][layer, :, :E] - pb["sorted_S_LDE"][layer, :, :E]).sum(-1)
            / a.k
        )
        rows.append(
            {
                "layer": layer,
                "js_distance": float(np.nanmean(np.abs(js_a - js_b))) if len(js_a) else 0.0,
                "profile_l1": float(np.nanmean(prof)),
                "entropy_a": float(np.nanmean(pa["entropy_LD"][layer])),
                "entropy_b": float(np.nanmean(pb["entropy_LD"][layer])),
                "cv_a": float(pa["cv_L"][layer]),
                "cv_b": float(pb["cv_L"][layer]),
                "maxvio_a": float(pa["maxvio_L"][layer]),
                "maxvio_b": float(pb["maxvio_L"][layer]),
                "cover50_a": float(np.nanmean(pa["cover50_LD"][layer])),
                "cover50_b": float(np.nanmean(pb["cover50_LD"][layer])),
            }
        )
    return pd.DataFrame(rows)


def same_initialization(run_a, run_b) -> bool:
    """Runs whose experts started identical: the same seed and the same model."""
    return run_a.recipe.get("seed") == run_b.recipe.get("seed") and run_a.recipe.get(
        "model"
    ) == run_b.recipe.get("model")


def align_experts(S_a_LDE, S_b_LDE):
    """Hungarian match of experts by their per-domain specialization profiles.

    Returns ``perm_LE``: in layer l, expert ``perm[l, i]`` of run b is matched to expert i of run
    a (minimum total L1 distance between the columns ``S[l, :, e]``), so ``S_b[:, :, perm]`` is
    b in a's numbering. Meaningful for runs from one initialisation.
    """
    from scipy.optimize import linear_sum_assignment

    A, B = np.nan_to_num(np.asarray(S_a_LDE, float)), np.nan_to_num(np.asarray(S_b_LDE, float))
    if A.shape != B.shape:
        raise AblateError(
            f"expert profiles of shape {A.shape} and {B.shape} cannot be aligned (same layers, "
            "domains "
            f"and experts needed)"
        )
    L, D, E = A.shape
    perm = np.empty((L, E), dtype=np.int64)
    for layer in range(L):
        cost = np.abs(A[layer][:, :, None] - B[layer][:, None, :]).sum(0)  # [E_a, E_b]
        rows, cols = linear_sum_assignment(cost)
        perm[layer, rows] = cols
    return perm


def permute_experts(x_LDE, perm_LE):
    """``x[l, :, perm[l]]``: a run's per-expert array in another run's numbering."""
    x = np.asarray(x_LDE)
    return np.take_along_axis(
        x, np.broadcast_to(perm_LE[:, None, :], x.shape[:-1] + (perm_LE.shape[-1],)), axis=-1
    )


def aligned_comparison(a, b, domains=None):
    """Expert-by-expert comparison after alignment (runs from one initialisation).

    Per layer: ``l1_aligned`` mean L1 distance between matched experts' specialization profiles
    (over domains, divided by k), ``l1_identity`` the same without alignment, ``kept`` the share
    of experts matched to their own id (1: the numbering survived training).
    """
    import pandas as pd

    domains = comparable_domains(a, b, domains)
    if a.num_experts != b.num_experts:
        raise AblateError(
            f"{a.run} has {a.num_experts} experts and {b.run} {b.num_experts}: experts cannot be "
            "aligned"
        )
    Sa = rm.specialization(*_totals(a, domains))
    Sb = rm.specialization(*_totals(b, domains))
    perm = align_experts(Sa, Sb)
    Sb_aligned = permute_experts(Sb, perm)
    k = a.k or 1
    rows = []
    for layer in range(a.num_layers):
        rows.append(
            {
                "layer": layer,
                "l1_aligned": float(np.nanmean(np.abs(Sa[layer] - Sb_aligned[layer]).sum(0)) / k),
                "l1_identity": float(np.nanmean(np.abs(Sa[layer] - Sb[layer]).sum(0)) / k),
                "kept": float((perm[layer] == np.arange(perm.shape[1])).mean()),
            }
        )
    out = pd.DataFrame(rows)
    out.attrs["perm_LE"] = perm
    return out


def shared_exclusive_frame(count_LDE, ntok_LD, k: int, domains, threshold: float = 1.5, pairs=None):
    """Per layer and domain pair: experts with high lift for both (shared), for one only."""
    import pandas as pd

    lift = rm.lift(count_LDE, ntok_LD, k)
    D = len(domains)
    pairs = pairs or [(i, j) for i in range(D) for j in range(i + 1, D)]
    rows = []
    for i, j in pairs:
        i, j = (
            (domains.index(i) if isinstance(i, str) else i),
            (domains.index(j) if isinstance(j, str) else j),
        )
        se = rm.shared_exclusive(lift, i, j, threshold)
        for layer in range(lift.shape[0]):
            rows.append(
                {
                    "a": domains[i],
                    "b": domains[j],
                    "layer": layer,
                    "shared": int(se["shared"][layer].sum()),
                    "only_a": int(se["only_a"][layer].sum()),
                    "only_b": int(se["only_b"][layer].sum()),
                }
            )
    return pd.DataFrame(rows)
