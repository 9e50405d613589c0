"""Compile every point of a sweep before any job starts, building each dataset's indices once.

Per-dataset indices live in the recipes' shared ``cache_dir`` keyed by (content, sequence
length, seed), and any recipe takes a prefix of them (``ablate.recipe.indices``). A cached
index that is too short for a later recipe is rebuilt longer, so the sweep first builds each
dataset's index once at the longest length any point needs, then compiles the points: each
compile then only plans, blends and writes plan.json. Jobs find everything cached and never
build indices on the cluster's time. A full disk, read-only file system or missing permission
met while building is one line naming the cache (``compile.cache_errors``). ``sweep submit
--dry-run`` never gets here: it compiles nothing.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np


def precompile(points: list, log: Callable[[str], None] | None = None) -> None:
    """Compile ``points`` (expanded, planned) into their run directories; sets ``point.plan``."""
    from ablate.recipe.blend_prefetch import prefetching
    from ablate.recipe.compile import _single_process_group, blend_jobs, compile_recipe

    need: dict[tuple, int] = {}
    for p in points:
        for stage in p.plan.stages:
            for d in stage.datasets:
                key = (p.plan.cache_dir, d.path, d.fingerprint, p.plan.seq_length, p.plan.seed)
                need[key] = max(need.get(key, 0), d.sample_offset + d.samples)
    # every point's blends are computed in the background while the shared indices build
    with _single_process_group(), prefetching(blend_jobs([p.plan for p in points])):
        if log:
            log(f"indices: {len(need)} dataset index(es) for {len(points)} point(s)")
        warm_indices(need)
        for i, p in enumerate(points):
            # planned and dumped at expansion: neither is done twice
            p.plan, _ = compile_recipe(p.recipe, plan=p.plan, recipe_text=p.text)
            if log:
                log(f"compiled {i + 1}/{len(points)}: {p.name}")


def warm_indices(need: dict[tuple, int]) -> None:
    """Build (or extend) each dataset's reusable index to the samples the sweep needs of it."""
    from megatron.core.datasets.gpt_dataset import GPTDatasetConfig
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    from ablate.recipe.compile import cache_errors
    from ablate.recipe.indices import IndexCache

    extra = next(
        f.default
        for f in dataclasses.fields(GPTDatasetConfig)
        if f.name == "add_extra_token_to_sequence"
    )
    for (cache_dir, path, fingerprint, seq, seed), samples in sorted(need.items()):
        with cache_errors(cache_dir):  # a full disk or read-only cache: one line naming it
            dataset = IndexedDataset(path, mmap=True)
            documents = np.arange(dataset.sequence_lengths.shape[0], dtype=np.int32)
            IndexCache(cache_dir, dataset, documents, fingerprint, seq, seed, extra).get(samples)
