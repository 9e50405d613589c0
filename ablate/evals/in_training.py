"""Evaluation inside training, at ``cadence.eval_every`` and at the last step.

The live model is scored in place (no checkpoint reload): every rank runs the same tasks on the
same inputs in lockstep, because with expert parallelism each rank holds only some experts and
a forward needs them all; rank 0 writes ``eval/step_<N>.json`` (the same file ``ablate eval``
writes, so a later ``ablate eval`` skips what was scored here). Evaluation uses no random
numbers and no gradients, so training continues exactly as it would have without it.
"""

from __future__ import annotations

import torch

from ablate.evals.loading import EvalModel, open_data
from ablate.evals.runner import evaluate
from ablate.evals.tasks import select
from ablate.evals.tasks.base import EvalOptions


def due(eval_every: int, step: int, total_steps: int) -> bool:
    return step == total_steps or (eval_every > 0 and step % eval_every == 0)


def evaluate_live(
    recipe, plan, run_dir: str, model: torch.nn.Module, step: int, device: torch.device, rank: int
) -> None:
    manifests, tokenizer = open_data(run_dir, recipe.data.manifests, plan.to_dict())
    em = EvalModel(
        run_dir=run_dir,
        name=recipe.name,
        step=step,
        recipe=recipe,
        plan=plan.to_dict(),
        manifests=manifests,
        tokenizer=tokenizer,
        model=model,
        device=device,
        seq_length=recipe.training.seq_length,
    )
    tasks, _ = select(",".join(recipe.cadence.eval_tasks))
    was_training = model.training
    model.eval()
    try:
        evaluate(
            run_dir,
            tasks,
            [step],
            EvalOptions(**recipe.cadence.eval_options),
            em=em,
            write=rank == 0,
            quiet=rank != 0,
        )
    finally:
        model.train(was_training)
