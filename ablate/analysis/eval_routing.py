"""Eval-time routing of one run: co-activation, router saturation over checkpoints, vocabulary
specialization (on the fixed held-out probe text ``ablate eval`` routes at every checkpoint)."""

from __future__ import annotations

import numpy as np

from ablate.analysis import routing_metrics as rm
from ablate.errors import AblateError


def same_tokens(a, b) -> None:
    """Saturation compares one token's routing at two checkpoints: the probe text must match."""
    if (
        a.topk_TKL.shape != b.topk_TKL.shape
        or not np.array_equal(a.token_ids_T, b.token_ids_T)
        or not np.array_equal(a.domain_T, b.domain_T)
        or list(a.domains) != list(b.domains)
    ):
        raise AblateError(
            f"{a.path} and {b.path} routed different probe tokens ({a.topk_TKL.shape[0]} vs "
            f"{b.topk_TKL.shape[0]} tokens, or other ids/domains): saturation needs the same text"
        )


def saturation_frame(run, domain_split: bool = True):
    """Router saturation of every evaluated checkpoint against the last: ``step, layer, domain,
    saturation`` (domain ``all`` plus, with ``domain_split``, each domain)."""
    import pandas as pd

    steps = run.eval_routing_steps()
    if not steps:
        raise AblateError(f"{run.path}: no eval/routing_step_*.npz (run 'ablate eval' on it)")
    final = run.eval_routing(steps[-1])
    rows = []
    for step in steps:
        ev = run.eval_routing(step)
        same_tokens(ev, final)
        per_tok_TL = rm.saturation_per_token(ev.topk_TKL, final.topk_TKL)
        groups = [("all", np.ones(len(ev.domain_T), bool))]
        if domain_split:
            groups += [(d, ev.domain_T == i) for i, d in enumerate(ev.domains)]
        for name, mask in groups:
            if not mask.any():
                continue
            sat_L = per_tok_TL[mask].mean(0)
            rows += [
                {"step": step, "layer": layer, "domain": name, "saturation": float(v)}
                for layer, v in enumerate(sat_L)
            ]
    return pd.DataFrame(rows)


def vocab_frame(ev, num_experts: int, min_count: int = 5):
    """Vocabulary specialization at one checkpoint: per layer and token id seen at least
    ``min_count`` times, ``share`` of its occurrences routed to its most frequent expert."""
    import pandas as pd

    vocab_V, n_V, share_LV = rm.vocab_specialization(ev.topk_TKL, ev.token_ids_T, num_experts)
    keep = n_V >= min_count
    L = share_LV.shape[0]
    return pd.DataFrame(
        {
            "layer": np.repeat(np.arange(L), keep.sum()),
            "token_id": np.tile(vocab_V[keep], L),
            "count": np.tile(n_V[keep], L),
            "share": share_LV[:, keep].ravel(),
        }
    )


def vocab_summary(ev, num_experts: int, min_count: int = 5):
    """Per layer: occurrence-weighted mean share (tokens seen ``min_count`` times or more) and the
    uniform-routing reference k/E."""
    import pandas as pd

    f = vocab_frame(ev, num_experts, min_count)
    rows = []
    for layer, g in f.groupby("layer"):
        rows.append(
            {
                "layer": layer,
                "tokens": len(g),
                "mean_share": float(np.average(g["share"], weights=g["count"]))
                if len(g)
                else float("nan"),
                "uniform": ev.k / num_experts,
            }
        )
    return pd.DataFrame(rows)
