"""``ablate compile``: recipe -> plan.json + megatron-core blends in the shared index cache.

Each stage becomes one megatron-core ``BlendedDataset`` over one ``ReusableGPTDataset`` per
dataset. The blend is *exhaustive*: it draws exactly the plan's sample count from each dataset,
interleaved by domain, then by dataset, so that every prefix of the stage is within one sample
of each domain's share and within two of each dataset's (``ablate.recipe.blend``: WF2Q at
O(samples), where megatron-core's greedy blend is O(samples x datasets)). Datasets and blends
are built through megatron-core's ``build_generic_dataset``: rank 0 builds, the other ranks
wait and then load, on any backend. A compile computes each blend in the background while
the datasets' indices build (``ablate.recipe.blend_prefetch``).
``build_stage_datasets`` is also what training calls, so training reads exactly this plan.

Faults: ``--dry-run`` writes nothing; the cache is checked for writing up front; every file of
the cache is written under an owned temporary name (``ablate.io``) that the writer removes on
any error and the next writer removes if the writer was killed; a full disk is one line.
"""

from __future__ import annotations

import errno
import logging
import os

import yaml

from ablate.data.tokenizer import TokenizerInfo
from contextlib import contextmanager

from ablate.errors import AblateError
from ablate.io import (
    exclusive_lock,
    os_error_line,
    os_errors,
    remove_path,
    remove_stale_temporaries,
    tmp_name,
    write_text_atomic,
)
from ablate.recipe.budget import format_tokens
from ablate.recipe.plan import Plan, make_plan
from ablate.recipe.schema import Recipe
from ablate.faults import disk_full, user_os_error
from ablate.run_layout import RunLayout, refuse_non_directory, run_lock


def compile_recipe(
    recipe: Recipe, dry_run: bool = False, plan: Plan | None = None, recipe_text: str | None = None
) -> tuple[Plan, str | None]:
    """Resolve the plan (or take ``plan``, already made from this recipe); unless ``dry_run``,
    build every stage's blend and write plan.json beside the resolved recipe (``recipe_text``:
    its YAML, if the caller has it already).

    ``dry_run`` writes nothing at all (not even the cache's memo of verified files). Otherwise
    the cache directory is checked for writing before anything is built, a full disk or a
    read-only cache is one line naming it, and the run directory's recipe.yaml and plan.json
    are written under its lock (``run_layout.run_lock``): never while a training holds it."""
    where = recipe.source or recipe.name
    if dry_run:
        return (plan if plan is not None else make_plan(recipe, save_memo=False)), None
    run_dir = recipe.resolved_run_dir
    refuse_non_directory(run_dir, f"{where}: run_dir")
    plan = plan if plan is not None else make_plan(recipe)
    prepare_cache_dir(plan.cache_dir, f"{where}: data.cache_dir")
    from ablate.recipe.blend_prefetch import prefetching

    # each stage's interleaving is computed in the background while its datasets' indices build
    with _single_process_group(), cache_errors(plan.cache_dir), prefetching(blend_jobs([plan])):
        blends = build_stage_datasets(plan)
    for stage, blend in zip(plan.stages, blends):
        stage.blend_key = blend.unique_description_hash
        for d, ds in zip(stage.datasets, blend.datasets):
            d.cache_key = ds.cache_key
    # the resolved recipe (every default filled in) sits beside the plan it produced; a damaged
    # plan.json there is simply replaced (it is this command's output)
    text = (
        recipe_text
        if recipe_text is not None
        else yaml.safe_dump(recipe.to_dict(), sort_keys=False)
    )
    layout = RunLayout(run_dir)
    with os_errors(run_dir):
        os.makedirs(run_dir, exist_ok=True)
    with exclusive_lock(*run_lock(run_dir)), os_errors(run_dir):
        remove_stale_temporaries(run_dir)
        write_text_atomic(layout.recipe, text)
        write_text_atomic(layout.plan, plan.to_json())
    return plan, layout.plan


def prepare_cache_dir(cache_dir: str, where: str) -> None:
    """Make the index cache and check it takes a file, before anything is built: one line
    naming it instead of megatron-core's "write access" message after minutes of work."""
    refuse_non_directory(cache_dir, where)
    probe = tmp_name(os.path.join(cache_dir, ".write-check"))
    with os_errors(cache_dir):
        os.makedirs(cache_dir, exist_ok=True)
        try:
            with open(probe, "w") as f:
                f.write("ablate")
        finally:
            remove_path(probe)
    for sub in ("", "indices", "blends"):  # what killed writers left (the entries' own are also
        remove_stale_temporaries(os.path.join(cache_dir, sub))  # removed when an entry is rebuilt)


@contextmanager
def cache_errors(cache_dir: str):
    """A full disk, read-only file system or missing permission met while building the cache,
    however megatron-core wrapped it, as one line naming the file (or the cache)."""
    try:
        yield
    except AblateError:
        raise
    except Exception as exc:
        cause = user_os_error(exc)
        if cause is None and disk_full(cache_dir):
            # numpy reports a short write without an errno ("N requested and M written")
            cause = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), cache_dir)
        if cause is None:
            raise
        raise AblateError(os_error_line(cache_dir, cause)) from None


def blend_jobs(plans: list[Plan]) -> list[tuple[list[int], list[str]]]:
    """The (sample counts, domains) of every stage blend these plans build, in build order."""
    return [
        ([d.samples for d in s.datasets], [d.domain for d in s.datasets])
        for p in plans
        for s in p.stages
    ]


def build_stage_datasets(plan: Plan) -> list:
    """One megatron-core ``BlendedDataset`` per stage, exactly as the plan says."""
    import torch.distributed as dist
    from megatron.core.datasets.blended_megatron_dataset_builder import (
        BlendedMegatronDatasetBuilder,
    )
    from megatron.core.datasets.utils import Split

    from ablate.recipe.blend import ExactBlendedDataset
    from ablate.recipe.indices import AblateGPTDatasetConfig, ReusableGPTDataset

    quiet = logging.getLogger("megatron.core.datasets")
    if quiet.level != logging.ERROR:  # setLevel clears every logger's cache: once per process
        quiet.setLevel(logging.ERROR)  # per-dataset INFO/WARN chatter
    # the datasets need only the ids and the fingerprint, which the manifest records
    tokenizer = TokenizerInfo(plan.tokenizer)
    build = BlendedMegatronDatasetBuilder.build_generic_dataset
    on_rank = lambda: True  # noqa: E731  (every rank holds the data; rank 0 writes the cache first)
    sync = dist.is_initialized() and dist.get_world_size() > 1  # rank 0 first, then the others
    blends = []
    for stage in plan.stages:
        config = AblateGPTDatasetConfig(
            random_seed=plan.seed,
            sequence_length=plan.seq_length,
            blend_per_split=[
                ([d.path for d in stage.datasets], [float(d.samples) for d in stage.datasets]),
                None,
                None,
            ],
            path_to_cache=os.path.join(plan.cache_dir, "blends"),
            tokenizer=tokenizer,
            reset_position_ids=False,
            reset_attention_mask=False,
            eod_mask_loss=False,
            create_attention_mask=False,
            mid_level_dataset_surplus=0.0,
            index_cache_dir=plan.cache_dir,
            dataset_slices={d.path: (d.fingerprint, d.sample_offset) for d in stage.datasets},
        )
        mids = []
        for d in stage.datasets:
            low = build(ReusableGPTDataset.build_low_level_dataset, on_rank, False, d.path, config)
            if low.sequence_lengths.shape[0] == 0:
                raise AblateError(f"dataset {d.prefix}: has no documents")
            documents = range(
                low.sequence_lengths.shape[0]
            )  # all of them; IndexCache makes the array if it builds
            mids.append(
                build(
                    ReusableGPTDataset,
                    on_rank,
                    sync,
                    low,
                    d.path,
                    documents,
                    d.samples,
                    Split.train,
                    config,
                )
            )
        blends.append(
            build(
                ExactBlendedDataset,
                on_rank,
                sync,
                mids,
                [d.samples for d in stage.datasets],
                config,
                [d.domain for d in stage.datasets],
            )
        )
        if sync:
            dist.barrier()
    return blends


def plan_table(plan: Plan) -> str:
    """The ``--dry-run`` view: per stage, per dataset, what the recipe asks and gets."""
    head = ("dataset", "domain", "weight", "samples", "requested", "realized", "epochs")
    out = [
        f"{plan.recipe}: seq_length {plan.seq_length}, global batch {plan.global_batch_size} "
        f"({plan.seq_length * plan.global_batch_size:,} tokens/step), tokenizer "
        f"{plan.tokenizer['fingerprint']}"
    ]
    for s in plan.stages:
        out.append(
            f"\nstage {s.name}: {format_tokens(s.tokens_nominal)} asked -> {s.steps:,} steps, "
            f"{s.samples:,} samples, {s.tokens:,} tokens"
        )
        rows = [head] + [
            (
                d.prefix,
                d.domain,
                f"{d.weight:.4f}",
                f"{d.samples:,}",
                f"{d.tokens_requested:,}",
                f"{d.tokens_realized:,}",
                f"{d.epochs:.3f}",
            )
            for d in s.datasets
        ]
        for dom, t in s.domain_totals().items():
            rows.append(
                (
                    f"= {dom}",
                    "",
                    f"{t['samples'] / s.samples:.4f}",
                    f"{t['samples']:,}",
                    f"{t['tokens_requested']:,}",
                    f"{t['tokens_realized']:,}",
                    "",
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
        for j, r in enumerate(rows):
            out.append(
                "  ".join(
                    c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))
                )
            )
            if j == 0 or j == len(s.datasets):
                out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def _single_process_group():
    """A one-process gloo group when none exists: megatron-core's builders need one (the
    helper shared with training, ``ablate.train.process_group``)."""
    from ablate.train.process_group import single_process_group

    return single_process_group()
