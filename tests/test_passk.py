"""pass@k (Chen et al. 2021) and the sampling options."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from ablate.errors import AblateError
from ablate.evals.lm import Sampling, _mix, sample_token
from ablate.evals.samples import check_sampling, default_ks, pass_at_k, pass_metrics, resolve_ks


@pytest.mark.parametrize(
    "n,c,k", [(10, 3, 1), (10, 3, 5), (10, 0, 3), (10, 10, 10), (7, 2, 4), (20, 1, 19)]
)
def test_pass_at_k_is_the_exact_combinatorial_probability(n, c, k):
    exact = 1 - math.comb(n - c, k) / math.comb(n, k)
    assert pass_at_k(n, c, k) == pytest.approx(exact, abs=1e-12)
    # and by enumeration: the share of k-subsets that hold a correct sample
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(samples, k))
    if len(subsets) < 200_000:
        assert pass_at_k(n, c, k) == pytest.approx(
            sum(any(s) for s in subsets) / len(subsets), abs=1e-12
        )


def test_pass_at_1_is_the_share_correct_and_pass_metrics_average_over_problems():
    assert pass_at_k(5, 2, 1) == pytest.approx(0.4)
    m = pass_metrics([[True, False, False, False], [False] * 4, [True] * 4], [1, 2, 4])
    assert m["pass@1"] == pytest.approx((0.25 + 0 + 1) / 3)
    assert m["pass@2"] == pytest.approx((0.5 + 0 + 1) / 3)
    assert m["pass@4"] == pytest.approx(2 / 3)


def test_k_choices_and_bad_sampling_options():
    assert default_ks(1) == [1]
    assert default_ks(20) == [1, 10, 20]
    assert default_ks(100) == [1, 10, 100]
    assert resolve_ks(10, (5, 1)) == [1, 5]
    with pytest.raises(AblateError, match="k=11 is more than --samples 10"):
        resolve_ks(10, (1, 11))
    with pytest.raises(AblateError, match="--temperature"):
        check_sampling(4, 0.0, 1.0)
    with pytest.raises(AblateError, match="--top-p"):
        check_sampling(4, 0.8, 0.0)
    with pytest.raises(AblateError, match="--samples"):
        check_sampling(0, 0.8, 1.0)


def test_sampling_is_seeded_and_top_p_keeps_the_nucleus():
    logits = torch.tensor([2.0, 1.0, 0.5, -1.0, -3.0])
    s = Sampling(temperature=1.0, top_p=1.0, seed=3)
    draws = [sample_token(logits, s, torch.Generator().manual_seed(_mix(3, i))) for i in range(200)]
    again = [sample_token(logits, s, torch.Generator().manual_seed(_mix(3, i))) for i in range(200)]
    assert draws == again and len(set(draws)) >= 3
    # top-p 0.5: token 0 alone holds 0.61 of the mass, so it is the whole nucleus
    nucleus = Sampling(temperature=1.0, top_p=0.5, seed=3)
    assert {
        sample_token(logits, nucleus, torch.Generator().manual_seed(i)) for i in range(100)
    } == {0}
    assert sample_token(logits, Sampling(), None) == 0  # temperature 0: argmax
    assert _mix(1, 2) != _mix(2, 1)
