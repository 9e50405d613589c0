"""A run's checkpoint, loaded for inference in one process (CPU or CUDA).

What a run directory holds is enough: ``recipe.yaml`` (the resolved recipe) rebuilds the same
megatron-core ``GPTModel``, ``plan.json`` names the tokenizer the model was trained with, and
``checkpoints/step_N/`` holds the weights, read by the training side's ``load_model_weights``
(megatron-core ``dist_checkpointing``: shards of any training layout are gathered back into the
one-process model).

Step 0 means the model as initialised from the recipe's seed (no checkpoint): the "untrained"
reference every score can be compared against.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import sys
from dataclasses import dataclass

import torch

from ablate.data.manifest import Manifest, load_manifests
from ablate.data.tokenizer import Tokenizer, load_tokenizer
from ablate.errors import AblateError, show
from ablate.io import read_json
from ablate.recipe.schema import Recipe, load_recipe

_STEP_DIR = re.compile(r"^step_(\d+)$")


@dataclass
class EvalModel:
    run_dir: str
    name: str
    step: int
    recipe: Recipe
    plan: dict
    manifests: list[Manifest]
    tokenizer: Tokenizer
    model: torch.nn.Module
    device: torch.device
    seq_length: int

    @property
    def domains(self) -> list[str]:
        return list(self.plan["domains"])


def available_steps(run_dir: str) -> list[int]:
    """Steps with a complete checkpoint (its ``train_state.json`` is written last)."""
    root = os.path.join(run_dir, "checkpoints")
    steps = []
    if os.path.isdir(root):
        for d in os.listdir(root):
            m = _STEP_DIR.match(d)
            if m and os.path.isfile(os.path.join(root, d, "train_state.json")):
                steps.append(int(m.group(1)))
    return sorted(steps)


def checkpoint_problem(run_dir: str, step: int) -> str | None:
    """What is wrong with the complete checkpoint at ``step`` (one phrase naming the file), or
    None: training's ``verify_checkpoint`` (sizes and small files' hashes against the record
    ``train_state.json`` keeps). Damage it cannot see is named when the weights fail to load."""
    from ablate.train import checkpoint

    return checkpoint.verify_checkpoint(checkpoint.checkpoint_dir(run_dir, step))


def usable_steps(run_dir: str, warn: bool = True) -> list[int]:
    """The complete checkpoints that pass ``checkpoint_problem``, oldest first; each damaged one
    is passed over with a warning line on stderr (when ``warn`` and some usable one is left)."""
    good, skipped = [], []
    for step in available_steps(run_dir):
        problem = checkpoint_problem(run_dir, step)
        if problem is None:
            good.append(step)
        else:
            skipped.append((step, problem))
    if warn and good:
        for step, problem in skipped:
            print(
                _skipped_line(
                    run_dir, step, problem, max((s for s in good if s < step), default=None)
                ),
                file=sys.stderr,
            )
    return good


def _skipped_line(run_dir: str, step: int, problem: str, instead: int | None) -> str:
    from ablate.train import checkpoint

    other = None if instead is None else checkpoint.checkpoint_dir(run_dir, instead)
    return checkpoint.skipped_warning(checkpoint.checkpoint_dir(run_dir, step), problem, other)


def choose_step(run_dir: str, step: int | None) -> int:
    """The checkpoint step to load: ``step`` itself (0: the initialisation), or the latest
    complete checkpoint that is not damaged (a damaged newer one is skipped with a warning). A
    named step that is missing or damaged, or no usable checkpoint at all, is one line."""
    steps = available_steps(run_dir)
    if step == 0:
        return 0
    if step is None:
        if not steps:
            raise AblateError(
                f"{run_dir}: has no complete checkpoint yet (train it first, or pass "
                "--step 0 to score the initialisation)"
            )
        good = usable_steps(run_dir, warn=False)
        latest = steps[-1]
        if not good:
            from ablate.train.checkpoint import checkpoint_dir

            raise AblateError(
                f"{checkpoint_dir(run_dir, latest)}: damaged checkpoint "
                f"({checkpoint_problem(run_dir, latest)}) and no earlier complete one "
                "(train again, or pass --step 0 to score the initialisation)"
            )
        for s in steps:
            if s > good[-1]:
                print(
                    _skipped_line(
                        run_dir, s, checkpoint_problem(run_dir, s) or "damaged", good[-1]
                    ),
                    file=sys.stderr,
                )
        return good[-1]
    if step not in steps:
        raise AblateError(
            f"{run_dir}: no complete checkpoint at step {step} (available: "
            f"{', '.join(map(str, steps)) or 'none'})"
        )
    problem = checkpoint_problem(run_dir, step)
    if problem is not None:
        from ablate.train.checkpoint import checkpoint_dir

        raise AblateError(
            f"{checkpoint_dir(run_dir, step)}: damaged checkpoint ({problem}); "
            "choose another --step"
        )
    return step


def read_run(run_dir: str) -> tuple[Recipe, dict]:
    """The resolved recipe and the plan of a run directory; missing or damaged ones (and a plan
    without what evaluation reads from it) are one line naming the file."""
    if not os.path.isdir(run_dir):
        raise AblateError(f"{run_dir}: no such run directory")
    for f in ("recipe.yaml", "plan.json"):
        if not os.path.isfile(os.path.join(run_dir, f)):
            raise AblateError(
                f"{run_dir}: has no {f} (is it a run directory? 'ablate compile RECIPE' "
                "writes both)"
            )
    recipe = load_recipe(os.path.join(run_dir, "recipe.yaml"))
    path = os.path.join(run_dir, "plan.json")
    plan = read_json(path, "plan")
    _check_plan(plan, path)
    return recipe, plan


def _check_plan(plan, path: str) -> None:
    """What evaluation reads from ``plan.json``: its domains and its tokenizer's vocabulary size
    and fingerprint (``ablate compile`` writes them; anything else is a damaged file)."""

    def bad(field: str, allowed: str):
        raise AblateError(
            f"{path}: {field}: damaged plan (allowed: {allowed}; compile the recipe again)"
        )

    if not isinstance(plan, dict):
        bad("(top level)", "a JSON object")
    domains = plan.get("domains")
    if (
        not isinstance(domains, (dict, list))
        or not domains
        or not all(isinstance(d, str) for d in domains)
    ):
        bad("domains", "a non-empty mapping of domain names")
    tok = plan.get("tokenizer")
    if not isinstance(tok, dict):
        bad("tokenizer", "an object with vocab_size and fingerprint")
    vocab = tok.get("vocab_size")
    if isinstance(vocab, bool) or not isinstance(vocab, int) or not 0 < vocab < 2**31:
        bad("tokenizer.vocab_size", "a positive integer")
    if not isinstance(tok.get("fingerprint"), str):
        bad("tokenizer.fingerprint", "a string")


def resolve_manifests(recipe: Recipe, run_dir: str) -> list[str]:
    """Manifest paths in a recipe are relative to where training ran: usually the project root,
    two levels above ``runs/<name>``. Try the current directory first, then that root."""
    project_root = os.path.dirname(os.path.dirname(os.path.abspath(run_dir)))
    out = []
    for p in recipe.data.manifests:
        candidates = [p] if os.path.isabs(p) else [p, os.path.join(project_root, p)]
        found = next((c for c in candidates if os.path.exists(c)), None)
        if found is None:
            raise AblateError(
                f"{run_dir}/recipe.yaml: data.manifests: {p} not found (looked in the current "
                f"directory and in {project_root})"
            )
        out.append(found)
    return out


@contextlib.contextmanager
def group_for_this_call():
    """The one-process group ``load_eval_model`` makes is destroyed when the block ends, if it
    did not exist before: a caller running ``ablate eval`` or ``export`` in-process (a notebook,
    a test) is not left in a world it did not ask for."""
    import torch.distributed as dist

    before = dist.is_available() and dist.is_initialized()
    try:
        yield
    finally:
        if not before and dist.is_available() and dist.is_initialized():
            from ablate.train import backend

            backend.shutdown()


def load_eval_model(run_dir: str, step: int | None = None, backend: str = "auto") -> EvalModel:
    """The model of ``run_dir`` at ``step`` (default: the latest complete checkpoint; 0: the
    initialisation), in eval mode, with its tokenizer and manifests."""
    recipe, plan = read_run(run_dir)
    step = choose_step(run_dir, step)
    manifests, tokenizer = open_data(run_dir, resolve_manifests(recipe, run_dir), plan)

    if backend == "cuda" and not torch.cuda.is_available():
        raise AblateError("--backend cuda: torch sees no GPU here")
    single = _single_process_recipe(recipe, backend)
    from ablate.train import backend as train_backend
    from ablate.train.model import build_model

    device = train_backend.init(single).device  # a world of one: cpu_compat on CPU, gloo or NCCL
    torch.manual_seed(
        recipe.seed
    )  # step 0: the training run's initialisation (expert-parallel rank 0)
    model = build_model(single, plan["tokenizer"]["vocab_size"], device.type)
    if step:
        _load_weights(model, run_dir, step, recipe)
    model.eval()
    return EvalModel(
        run_dir=run_dir,
        name=recipe.name,
        step=step,
        recipe=recipe,
        plan=plan,
        manifests=manifests,
        tokenizer=tokenizer,
        model=model,
        device=device,
        seq_length=recipe.training.seq_length,
    )


def open_data(
    run_dir: str, manifest_paths: list[str], plan: dict
) -> tuple[list[Manifest], Tokenizer]:
    """The run's manifests and tokenizer, refusing data tokenized differently from the
    checkpoint."""
    manifests = load_manifests(manifest_paths, where=f"{run_dir}/recipe.yaml: data.manifests")
    trained_with = plan["tokenizer"]["fingerprint"]
    data_tokenizer = manifests[0].tokenizer["fingerprint"]
    if data_tokenizer != trained_with:
        raise AblateError(
            f"{run_dir}: the checkpoint was trained with tokenizer {trained_with}, but "
            f"{manifests[0].path} is now tokenized with {data_tokenizer}: evaluate with the data "
            "it was "
            "trained on"
        )
    return manifests, load_tokenizer(
        manifests[0].tokenizer, manifests[0].root, where=f"{manifests[0].path}: tokenizer"
    )


def _single_process_recipe(recipe: Recipe, backend: str) -> Recipe:
    """The same model, every expert local, on ``backend``: one process holds it all."""
    par = dataclasses.replace(
        recipe.parallelism,
        tp=1,
        pp=1,
        ep=1,
        cp=1,
        vp=1,
        distributed_optimizer=False,
        overlap_grad_reduce=False,
        overlap_param_gather=False,
    )
    model = dataclasses.replace(
        recipe.model, moe_token_dispatcher_type="auto", moe_grouped_gemm=False
    )
    training = (
        recipe.training
        if backend == "auto"
        else dataclasses.replace(recipe.training, backend=backend)
    )
    return dataclasses.replace(recipe, parallelism=par, training=training, model=model)


def _load_weights(model: torch.nn.Module, run_dir: str, step: int, recipe: Recipe) -> None:
    """The checkpoint's model weights, whatever layout trained them, through the training side's
    own loader (megatron-core ``dist_checkpointing`` reshards them into this one-process model)."""
    from ablate.train.checkpoint import checkpoint_dir, load_model_weights

    from torch.distributed.checkpoint.api import CheckpointException  # a BaseException

    path = checkpoint_dir(run_dir, step)
    try:
        load_model_weights(path, [model])
    except AblateError:
        raise
    except (Exception, CheckpointException) as exc:  # torch/megatron raise many kinds for it
        # damage the cheap checks cannot see (a large shard changed in place): name the checkpoint
        if isinstance(exc, CheckpointException) and getattr(exc, "failures", None):
            # the rank's own error (failures: rank -> (exception, stack)), not the wrapper's text
            exc = next(iter(exc.failures.values()))[0]
        detail = (str(exc).strip().splitlines() or [""])[0]
        raise AblateError(
            f"{path}: damaged checkpoint, its weights do not load "
            f"({type(exc).__name__}: {show(detail, 120)})"
        ) from None
