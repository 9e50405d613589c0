"""The run directory's layout, in one place: every writer and reader asks this module.

    runs/<name>/
      recipe.yaml          the recipe, resolved (every default filled in)
      plan.json            the compiled plan (exact tokens per stage and domain)
      status.json          pending / running / completed / failed / preempted, and why
      metrics.jsonl        one row per logged step (loss, per-domain loss and tokens, telemetry)
      tb/                  TensorBoard events
      routing/step_<N>.npz expert counts per layer, domain and expert since the previous flush
      checkpoints/step_<N>/  weights/ (dist_checkpointing), rng/, train_state.json (written last)
      eval/step_<N>.json   capability scores (``ablate eval``)
      .lock                held by the one process writing the run (``ablate train``, the
                           writes of ``ablate compile``): a second one is refused in one line

Importing it imports nothing heavy (no torch).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

STEP_DIGITS = 8
# metrics.jsonl keys that start like a domain's cumulative tokens (``tokens/<domain>``) but are
# throughput
THROUGHPUT_KEYS = ("tokens/s", "tokens/s/device")


def domain_of_tokens_key(key: str) -> str | None:
    """``code.exec`` for ``tokens/code.exec``; None for any other metrics key (throughput too)."""
    if not key.startswith("tokens/") or key in THROUGHPUT_KEYS:
        return None
    return key[len("tokens/") :]


def run_lock(run_dir: str) -> tuple[str, str]:
    """``(lock path, what)`` for ``ablate.io.exclusive_lock``: the run directory's one owner."""
    return os.path.join(run_dir, RunLayout.LOCK), f"run directory {run_dir}"


def refuse_non_directory(path: str, where: str) -> None:
    """One line if ``path``, or the nearest of its parents that exists, is not a directory
    (``where`` names the field: ``recipe.yaml: run_dir``)."""
    from ablate.errors import AblateError

    probe = os.path.abspath(path)
    while not os.path.lexists(probe) and os.path.dirname(probe) != probe:
        probe = os.path.dirname(probe)
    if os.path.lexists(probe) and not os.path.isdir(probe):
        what = path if probe == os.path.abspath(path) else f"{path} (its parent {probe})"
        raise AblateError(
            f"{where}: {what} is not a directory (a file is in the way: move it, or choose "
            "another directory)"
        )


@dataclass(frozen=True)
class RunLayout:
    root: str

    # the names, for code that lists or checks entries relative to a run directory
    RECIPE = "recipe.yaml"
    PLAN = "plan.json"
    STATUS = "status.json"
    METRICS = "metrics.jsonl"
    TENSORBOARD = "tb"
    ROUTING = "routing"
    CHECKPOINTS = "checkpoints"
    TRAIN_STATE = "train_state.json"  # inside a checkpoint: written last, marks it complete
    EVAL = "eval"
    LOCK = ".lock"

    @property
    def recipe(self) -> str:
        return os.path.join(self.root, self.RECIPE)

    @property
    def plan(self) -> str:
        return os.path.join(self.root, self.PLAN)

    @property
    def status(self) -> str:
        return os.path.join(self.root, self.STATUS)

    @property
    def metrics(self) -> str:
        return os.path.join(self.root, self.METRICS)

    @property
    def tensorboard(self) -> str:
        return os.path.join(self.root, self.TENSORBOARD)

    @property
    def routing_dir(self) -> str:
        return os.path.join(self.root, self.ROUTING)

    def routing(self, step: int) -> str:
        return os.path.join(self.routing_dir, f"step_{step:0{STEP_DIGITS}d}.npz")

    @property
    def checkpoints(self) -> str:
        return os.path.join(self.root, self.CHECKPOINTS)

    def checkpoint(self, step: int) -> str:
        return os.path.join(self.checkpoints, f"step_{step:0{STEP_DIGITS}d}")

    def complete_checkpoints(self) -> list[str]:
        """Complete checkpoints (``train_state.json`` present), oldest first."""
        if not os.path.isdir(self.checkpoints):
            return []
        dirs = sorted(d for d in os.listdir(self.checkpoints) if d.startswith("step_"))
        return [
            os.path.join(self.checkpoints, d)
            for d in dirs
            if os.path.isfile(os.path.join(self.checkpoints, d, self.TRAIN_STATE))
        ]

    @property
    def eval_dir(self) -> str:
        return os.path.join(self.root, self.EVAL)

    def eval_scores(self, step: int) -> str:
        return os.path.join(self.eval_dir, f"step_{step}.json")
