"""Several samples per problem, and pass@k.

``--samples N --temperature T [--top-p P] [--seed S]`` makes every generative task draw ``N``
completions per problem (``N = 1`` with temperature 0, the default, is greedy decoding). Sample
``j`` of problem ``i`` is generated with its own generator seeded from ``(S, i, j)``
(``LanguageModel.generate``'s ``row_seeds``), so a score is a function of the checkpoint, the
options and the seed: deterministic on CPU, whatever the batch.

``pass@k`` is the unbiased estimator of Chen et al. 2021 ("Evaluating Large Language Models
Trained on Code"): with ``n`` samples of which ``c`` are correct,
``pass@k = 1 - C(n - c, k) / C(n, k)``, averaged over problems; computed as a product for
numerical stability. Reported for every ``k`` in ``--pass-k`` (default: 1 and the powers of ten
up to ``N``, and ``N``); a ``k`` above ``N`` is an error.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ablate.errors import AblateError


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of ``k`` of the ``n`` samples (``c`` correct) is correct."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n (n={n}, c={c}, k={k})")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def default_ks(samples: int) -> list[int]:
    ks, k = [1], 10
    while k < samples:
        ks.append(k)
        k *= 10
    if samples not in ks:
        ks.append(samples)
    return ks


def resolve_ks(samples: int, pass_k: Sequence[int] | None) -> list[int]:
    """The ``k``s to report; one clear line for a ``k`` the samples cannot estimate."""
    if pass_k is None:
        return default_ks(samples)
    ks = sorted(set(int(k) for k in pass_k))
    for k in ks:
        if k < 1:
            raise AblateError(f"--pass-k: k must be at least 1, got {k}")
        if k > samples:
            raise AblateError(
                f"--pass-k: k={k} is more than --samples {samples} (pass@k needs k <= samples)"
            )
    return ks


def check_sampling(samples: int, temperature: float, top_p: float) -> None:
    if samples < 1:
        raise AblateError(f"--samples: must be at least 1, got {samples}")
    if temperature < 0:
        raise AblateError(f"--temperature: must be 0 (greedy) or positive, got {temperature}")
    if not 0.0 < top_p <= 1.0:
        raise AblateError(f"--top-p: must be in (0, 1], got {top_p}")
    if samples > 1 and temperature == 0:
        raise AblateError(
            f"--samples {samples}: greedy decoding gives the same completion every time; "
            "pass --temperature T > 0 to sample"
        )


def pass_metrics(correct: Sequence[Sequence[bool]], ks: Sequence[int]) -> dict[str, float]:
    """``pass@k`` for each ``k``, averaged over problems (each a list of per-sample results)."""
    out = {}
    for k in ks:
        out[f"pass@{k}"] = float(
            np.mean([pass_at_k(len(c), sum(map(bool, c)), k) for c in correct])
        )
    return out


def sampling_identity(options) -> dict:
    """What of the options a generative score depends on (goes into the task fingerprint)."""
    ident = {"samples": options.samples, "max_new_tokens": options.max_new_tokens}
    if options.temperature > 0:
        ident.update(temperature=options.temperature, top_p=options.top_p, seed=options.seed)
    if options.pass_k is not None:
        ident["pass_k"] = sorted(options.pass_k)
    return ident


def generate_samples(
    ctx, prompts: Sequence[str], max_new_tokens: int, stops: Sequence[str]
) -> list[list[str]]:
    """``ctx.options.samples`` completions of every prompt: ``out[i][j]`` is sample ``j`` of
    prompt ``i``."""
    from ablate.evals.lm import Sampling

    o = ctx.options
    n = o.samples
    sampling = Sampling(temperature=o.temperature, top_p=o.top_p, seed=o.seed)
    flat = [p for p in prompts for _ in range(n)]
    seeds = [i * n + j for i in range(len(prompts)) for j in range(n)]
    texts = ctx.lm.generate_text(flat, max_new_tokens, stops, sampling=sampling, row_seeds=seeds)
    return [texts[i * n : (i + 1) * n] for i in range(len(prompts))]
