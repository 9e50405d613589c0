"""The stage blend's interleaving (ablate.recipe.blend): exact counts, every prefix within one
sample of every domain's share (and of every dataset's, where the interleaving is flat), one
order whichever implementation computes it."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ablate.recipe import blend
from ablate.recipe.blend import _wf2q_python, blend_order, interleave

needs_extension = pytest.mark.skipif(
    blend._blend is None, reason="the optional C extension is not built"
)


def assert_fair(dataset_index: np.ndarray, dataset_sample_index: np.ndarray, counts) -> None:
    """Exact counts, samples of each dataset in order, and every prefix N of the stage holding
    within one sample of counts[d] / S * N of each dataset d (exact integer arithmetic)."""
    counts = np.asarray(counts, dtype=np.int64)
    S = int(counts.sum())
    assert dataset_index.dtype == np.int16 and len(dataset_index) == S
    assert dataset_sample_index.dtype in (np.int32, np.int64)
    assert np.array_equal(np.bincount(dataset_index, minlength=len(counts)), counts)
    order = np.argsort(dataset_index, kind="stable")  # positions, grouped by dataset, increasing
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    k = np.arange(S) - np.repeat(starts, counts)  # 0-based rank of each sample within its dataset
    assert np.array_equal(dataset_sample_index[order], k)
    n, p = (
        np.repeat(counts, counts).astype(object),
        order.astype(object),
    )  # Python ints: no overflow
    k = k.astype(object)
    # right after its (k+1)-th sample, at p: at most 1 over; right before it: at most 1 under.
    # Between two samples of a dataset its error only falls, so these prefixes are the extremes.
    assert ((k + 1) * S - n * (p + 1) <= S).all()
    assert (k * S - n * p >= -S).all()


def all_ways(counts):
    """(dataset_index, dataset_sample_index, misplaced) from each implementation available."""
    counts = np.asarray(counts, dtype=np.int64)
    S = int(counts.sum())
    out = {}
    runs = {"python": lambda a, b: _wf2q_python(counts, a, b)}
    if blend._blend is not None:
        runs["auto"] = lambda a, b: blend._blend.wf2q(counts, a, b)
        runs["heaps"] = lambda a, b: blend._blend.wf2q(counts, a, b, 1)
        runs["wheels"] = lambda a, b: blend._blend.wf2q(counts, a, b, 2)
        runs["sorted"] = lambda a, b: blend._blend.wf2q(counts, a, b, 3)
        runs["scan"] = lambda a, b: blend._blend.wf2q(counts, a, b, 4)
    for name, run in runs.items():
        a, b = np.empty(S, np.int16), np.empty(S, np.int64)
        out[name] = (a, b, run(a, b))
    return out


def check(counts) -> None:
    ways = all_ways(counts)
    a, b, misplaced = ways["python"]
    assert misplaced == 0
    assert_fair(a, b, counts)
    for name, (a2, b2, m2) in ways.items():
        assert m2 == 0 and np.array_equal(a, a2) and np.array_equal(b, b2), name


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 400), min_size=1, max_size=40))
def test_any_counts_give_exact_counts_and_fair_prefixes(counts):
    check(counts)


@settings(max_examples=30, deadline=None)
@given(st.integers(2, 300), st.integers(1, 5), st.integers(20, 60))
def test_one_dominant_dataset_and_many_tiny_ones(tiny, each, scale):
    # one dataset at ~0.97 of the stage, the rest equal and tiny (the worst case for fixed keys)
    big = 97 * tiny * each * scale // 300
    check([big] + [each] * tiny)
    check([each] * (tiny // 2) + [big] + [each] * (tiny - tiny // 2))


def test_five_hundred_datasets():
    rng = np.random.default_rng(7)
    check(rng.integers(1, 200, 500))
    check(np.maximum(1, rng.lognormal(3, 1.5, 500).astype(np.int64)))


def test_equal_counts_are_round_robin():
    a, b = interleave([3, 3, 3])
    assert a.tolist() == [0, 1, 2] * 3 and b.tolist() == [0] * 3 + [1] * 3 + [2] * 3


@needs_extension
def test_a_large_stage_is_fair_and_the_same_order_every_time():
    rng = np.random.default_rng(3)
    counts = np.maximum(1, (rng.lognormal(0, 0.8, 64) * 6000).astype(np.int64))
    counts[5] = 3  # a tiny dataset: long gaps between its samples
    a, b = interleave(counts)
    assert_fair(a, b, counts)
    a2, b2 = interleave(counts)
    assert np.array_equal(a, a2) and np.array_equal(b, b2)
    h, hb = np.empty_like(a), np.empty_like(b)
    assert (
        blend._blend.wf2q(counts, h, hb, 1) == 0 and np.array_equal(a, h) and np.array_equal(b, hb)
    )
    assert (
        blend._blend.wf2q(counts, h, hb, 4) == 0 and np.array_equal(a, h) and np.array_equal(b, hb)
    )


@needs_extension
@pytest.mark.parametrize(
    "counts",
    [
        [999_983, 1_000_003, 999_979, 7],  # coprime, nearly equal: finishes a hair apart
        [1_048_576, 1_048_576, 524_288, 262_144, 1],  # powers of two: many exact ties
        [2_000_000, 1_999_999, 3, 1_000_001, 999_998, 17, 500_000, 250_001],
    ],
)
def test_the_scan_orders_near_and_exact_ties_as_the_exact_fractions_do(counts):
    """The scan compares each finish as one integer, floor(finish 2^F); at a few million
    samples, finishes of different datasets come within 1/S of each other, and its order must
    still be the exact one (the heaps compare the fractions themselves)."""
    counts = np.asarray(counts, dtype=np.int64)
    S = int(counts.sum())
    orders = {}
    for mode in (1, 3, 4):
        a, b = np.empty(S, np.int16), np.empty(S, np.int64)
        assert blend._blend.wf2q(counts, a, b, mode) == 0
        orders[mode] = (a, b)
    for mode in (3, 4):
        assert np.array_equal(orders[1][0], orders[mode][0]) and np.array_equal(
            orders[1][1], orders[mode][1]
        ), mode


@needs_extension
def test_interleavings_stepped_side_by_side_are_the_ones_computed_alone():
    """wf2q_lanes runs the scan-suited jobs two at a time and the rest alone (one dataset;
    more than the scan takes): each order must be exactly wf2q's for that job."""
    rng = np.random.default_rng(11)
    jobs = [
        np.array([5000]),
        np.array([700, 1300]),
        rng.integers(1, 900, 6),
        rng.integers(1, 400, 23),
        rng.integers(1, 50, 64),
        rng.integers(1, 2000, 3),
        np.array([1, 1, 1, 1, 40_000]),
    ]
    jobs = [np.asarray(c, dtype=np.int64) for c in jobs]
    outs = [np.empty(int(c.sum()), np.int16) for c in jobs]
    assert blend._blend.wf2q_lanes(list(zip(jobs, outs))) == [0] * len(jobs)
    for counts, out in zip(jobs, outs):
        alone = np.empty_like(out)
        assert blend._blend.wf2q(counts, alone) == 0 and np.array_equal(out, alone)
    with pytest.raises(ValueError, match="wf2q_lanes"):
        blend._blend.wf2q_lanes([(np.array([3, 0], np.int64), np.empty(3, np.int16))])


def assert_fair_by_group(
    dataset_index: np.ndarray, dataset_sample_index: np.ndarray, counts, groups
) -> None:
    """Exact counts, each dataset's samples in order; every prefix N within one sample of each
    group's share and within 1 + v_d (v_d: the dataset's part of its group) of each dataset's,
    in exact integer arithmetic."""
    counts = np.asarray(counts, dtype=np.int64)
    S = int(counts.sum())
    assert dataset_index.dtype == np.int16 and len(dataset_index) == S
    assert np.array_equal(np.bincount(dataset_index, minlength=len(counts)), counts)
    for d in range(len(counts)):  # the k-th sample of d is sample k
        assert np.array_equal(dataset_sample_index[dataset_index == d], np.arange(counts[d]))
    N = np.arange(1, S + 1, dtype=object)
    labels = np.array(groups, dtype=object)
    for g in dict.fromkeys(groups):
        inside = labels == g
        n_g = int(counts[inside].sum())
        seen = np.cumsum(inside[dataset_index]).astype(object)
        assert (abs(seen * S - n_g * N) <= S).all(), g  # |seen - N n_g / S| <= 1
        for d in np.flatnonzero(inside):
            seen_d = np.cumsum(dataset_index == d).astype(object)
            # |seen_d - N n_d / S| <= 1 + n_d / n_g, times S n_g
            assert (
                abs(seen_d * S * n_g - int(counts[d]) * n_g * N) <= S * (n_g + int(counts[d]))
            ).all(), d


def check_by_group(counts, groups) -> None:
    a, b = blend_order(counts, groups)
    assert_fair_by_group(a, b, counts, groups)
    a2, b2 = blend_order(counts, groups, use_extension=False)  # the numpy/Python reference
    assert np.array_equal(a, a2) and np.array_equal(b, b2)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 300), st.sampled_from("abcde")), min_size=1, max_size=30))
def test_by_domain_every_prefix_holds_each_domain_within_one_sample(pairs):
    check_by_group([c for c, _ in pairs], [g for _, g in pairs])


def test_by_domain_on_a_stage_shaped_like_the_benchmark():
    rng = np.random.default_rng(11)
    cycle = [
        "general",
        "code.exec",
        "math.text",
        "general",
        "code.nl",
        "math.structured",
        "general",
    ]
    counts = np.maximum(1, rng.lognormal(4, 1.2, 40).astype(np.int64))
    check_by_group(counts, [cycle[i % len(cycle)] for i in range(len(counts))])


def test_one_dataset_per_domain_is_the_flat_interleaving():
    counts = [13, 5, 8, 1, 21]
    a, b = blend_order(counts, ["x", "y", "z", "w", "v"])
    fa, fb = interleave(counts)
    assert np.array_equal(a, fa) and np.array_equal(b, fb)


def test_a_flat_interleaving_lets_a_domain_drift_where_by_domain_does_not():
    # two domains of several datasets each: flat keeps datasets within one, not domains
    counts = np.array([7, 7, 7, 7, 7, 7, 3, 2, 2, 3], dtype=np.int64)
    groups = ["a"] * 6 + ["b"] * 4
    S, n_a = int(counts.sum()), int(counts[:6].sum())
    N = np.arange(1, S + 1)
    flat, _ = interleave(counts)
    drift = np.abs(np.cumsum(flat < 6) - n_a / S * N).max()
    by_domain, _ = blend_order(counts, groups)
    assert np.abs(np.cumsum(by_domain < 6) - n_a / S * N).max() <= 1 < drift


def test_bad_counts_are_refused():
    for counts in ([], [0, 3], [-1], [[1, 2]]):
        with pytest.raises(ValueError):
            interleave(counts)


def test_a_failed_check_falls_back_to_megatron_greedy(monkeypatch):
    from megatron.core.datasets import helpers

    def broken(counts, a, b, heaps=False):
        a[:] = 0
        b[:] = 0
        return 1

    monkeypatch.setattr(blend, "_blend", type("M", (), {"wf2q": staticmethod(broken)}))
    counts = np.array([5, 2, 9], dtype=np.int64)
    a, b = interleave(counts)
    want_a, want_b = np.empty(16, np.int16), np.empty(16, np.int64)
    helpers.build_exhaustive_blending_indices(want_a, want_b, counts, 3)
    assert np.array_equal(a, want_a) and np.array_equal(b, want_b)


# ------------------------------------------------------------------ the megatron-core blend


class _Mid:
    """Just what BlendedDataset reads from its datasets."""

    def __init__(self, i: int, n: int):
        from megatron.core.datasets.utils import Split

        self.n, self.dataset_path, self.index_split = n, f"ds{i}", Split.train
        self.unique_identifiers = {"class": "Mid", "path": self.dataset_path, "num_samples": n}

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return {"sample": (self.dataset_path, int(i))}


def _config(cache):
    from megatron.core.datasets.blended_megatron_dataset_config import BlendedMegatronDatasetConfig

    return BlendedMegatronDatasetConfig(
        random_seed=1,
        sequence_length=8,
        blend_per_split=[None, None, None],
        path_to_cache=str(cache),
        tokenizer=None,
        mid_level_dataset_surplus=0.0,
    )


def test_the_blend_is_cached_under_a_key_that_names_the_interleaving(tmp_path, monkeypatch):
    from ablate.recipe.blend import ExactBlendedDataset

    counts = [7, 3, 11]
    mids = [_Mid(i, n) for i, n in enumerate(counts)]
    built = ExactBlendedDataset(mids, counts, _config(tmp_path))
    assert len(built) == 21 and built[0]["dataset_id"] == built.dataset_index[0]
    assert_fair(np.asarray(built.dataset_index), np.asarray(built.dataset_sample_index), counts)
    files = sorted(os.listdir(tmp_path))
    assert files == sorted(
        f"{built.unique_description_hash}-ExactBlendedDataset-train-{s}"
        for s in ("description.txt", "dataset_index.npy", "dataset_sample_index.npy")
    )
    description = next(f for f in files if f.endswith("description.txt"))
    assert (
        json.loads((tmp_path / description).read_text())["interleave"]
        == f"wf2q/{blend.BLEND_FORMAT}"
    )
    loaded = ExactBlendedDataset(mids, counts, _config(tmp_path))  # a cache hit: memory-mapped
    assert isinstance(loaded.dataset_index, np.memmap)
    assert np.array_equal(loaded.dataset_index, built.dataset_index)
    monkeypatch.setattr(
        blend, "BLEND_FORMAT", blend.BLEND_FORMAT + 1
    )  # another interleaving: another key
    other = ExactBlendedDataset(mids, counts, _config(tmp_path))
    assert (
        other.unique_description_hash != built.unique_description_hash
        and len(os.listdir(tmp_path)) == 6
    )


def test_a_blend_asking_a_dataset_for_more_than_it_has_is_refused(tmp_path):
    from ablate.recipe.blend import ExactBlendedDataset

    with pytest.raises(IndexError, match="asks dataset 1"):
        ExactBlendedDataset([_Mid(0, 5), _Mid(1, 2)], [5, 3], _config(tmp_path))
