"""Evaluation inside training as a trainer callback (attached by ``ablate train`` / the launcher
when ``cadence.eval_tasks`` is set): scores the live model at ``cadence.eval_every`` and at the
last step, after that step's checkpoint (see ``in_training``)."""

from __future__ import annotations

import time

from ablate.errors import AblateError
from ablate.train.callbacks import Callback


class EvalCallback(Callback):
    def on_start(self, trainer) -> None:
        lay = trainer.layout
        if lay.tp > 1 or lay.pp > 1 or lay.cp > 1:
            raise AblateError(
                f"{trainer.recipe.source}: cadence.eval_tasks: evaluation inside training runs on "
                "data- "
                f"and expert-parallel layouts only (this run has tp={lay.tp} pp={lay.pp} "
                f"cp={lay.cp}); "
                "drop eval_tasks and run 'ablate eval' on the checkpoints"
            )

    def on_after_step(self, trainer) -> None:
        from ablate.evals.in_training import due, evaluate_live

        cad = trainer.recipe.cadence
        if not due(cad.eval_every, trainer.step, trainer.data.total_steps):
            return
        start = time.time()
        evaluate_live(
            trainer.recipe,
            trainer.plan,
            trainer.run.root,
            trainer.engine.modules[0],
            trainer.step,
            trainer.layout.device,
            trainer.layout.rank,
        )
        trainer.untimed_s += time.time() - start


def eval_callbacks(recipe) -> list:
    return [EvalCallback()] if recipe.cadence.eval_tasks else []
