"""The trainer: read it top to bottom.

    recipe -> backend + parallel state -> plan (compiled, or checked against plan.json)
    -> Engine (megatron-core GPTModel chunks in megatron DDP, megatron's optimizer, schedules)
    -> resume (latest complete checkpoint, any layout) or init_from (weights only)
    -> for every step: LR -> engine.step(this rank's micro-batches) -> tokens per domain
       -> callbacks (metrics, routing counts, in-training eval, ...) -> checkpoint / preemption

What is not the loop's business is a callback, attached from the top (``cli.py`` /
``launchers/pretrain.py``): per-domain metrics and telemetry, routing capture, evaluation. The
loop owns only what decides control flow: the plan, checkpoints and preemption.
"""

from __future__ import annotations

import json
import os
import signal
import time

import numpy as np
import torch
import torch.distributed as dist

from ablate.errors import AblateError
from ablate.recipe.schema import Recipe, load_recipe
from ablate.run_layout import RunLayout
from ablate.train import backend as backends
from ablate.train import checkpoint as ckpt
from ablate.train.callbacks import Callback, default_callbacks


def train(recipe_path: str, resume: str = "auto", reset_optimizer: bool = False,
          callbacks: list[Callback] | None = None) -> dict:
    recipe = load_recipe(recipe_path)
    layout = backends.init(recipe)
    run_dir = recipe.resolved_run_dir
    try:
        trainer = Trainer(recipe, layout, run_dir, callbacks=default_callbacks(recipe) + list(callbacks or []))
        return trainer.fit(resume, reset_optimizer)
    except BaseException as exc:
        if layout.rank == 0 and os.path.isdir(run_dir) and not isinstance(exc, SystemExit):
            ckpt.write_status(run_dir, "failed", exit_reason=f"{type(exc).__name__}: {exc}"[:500])
        raise
    finally:
        backends.shutdown()


class Trainer:
    def __init__(self, recipe: Recipe, layout, run_dir: str, callbacks: list[Callback]):
        from ablate.io import write_text_atomic
        from ablate.recipe.compile import build_stage_datasets
        from ablate.recipe.plan import make_plan
        from ablate.train.data import StagedData
        from ablate.train.engine import Engine

        self.recipe, self.layout, self.run = recipe, layout, RunLayout(run_dir)
        self.rank0 = layout.rank == 0
        # ---- plan: the exact data this run consumes
        self.plan = make_plan(recipe)
        if os.path.exists(self.run.plan):
            with open(self.run.plan) as f:
                saved = json.load(f).get("fingerprint")
            if saved != self.plan.fingerprint:
                raise AblateError(f"{self.run.plan}: compiled from a different recipe or data (plan {saved}, this "
                                  f"recipe's {self.plan.fingerprint}); run 'ablate compile {recipe._path}' or use "
                                  "another run_dir")
        blends = build_stage_datasets(self.plan)
        if self.rank0:
            import yaml

            os.makedirs(run_dir, exist_ok=True)
            write_text_atomic(self.run.recipe, yaml.safe_dump(recipe.to_dict(), sort_keys=False))
            write_text_atomic(self.run.plan, self.plan.to_json())
        from megatron.core import parallel_state as ps

        edge = ps.is_pipeline_first_stage(ignore_virtual=True) or ps.is_pipeline_last_stage(ignore_virtual=True)
        self.data = StagedData(self.plan, blends, recipe.training.micro_batch_size, layout.dp_rank, layout.dp,
                               layout.device, layout.cp_rank, layout.cp, read_tokens=edge)
        self.engine = Engine(recipe, layout, self.plan.tokenizer["vocab_size"], len(self.data.domains))
        self.callbacks = callbacks
        self.step = 0
        self.tokens_D = np.zeros(len(self.data.domains), dtype=np.int64)  # cumulative: the run-time budget proof
        self.stop_signal: str | None = None
        self.untimed_s = 0.0  # seconds callbacks spent outside training (evaluation): not throughput
        self.resumed_from = None
        mode = recipe.cadence.async_checkpoint
        self.async_saves = ckpt.AsyncSaves() if mode == "on" or (mode == "auto" and layout.backend == "cuda") else None

    # ---------------------------------------------------------------- the loop
    def fit(self, resume: str = "auto", reset_optimizer: bool = False) -> dict:
        from ablate.train.schedule import lr_at

        recipe, data, engine = self.recipe, self.data, self.engine
        self._resume(resume, reset_optimizer)
        ckpt.prepare_writer()  # its helper process must outlive the signals below
        # preemption: Slurm sends SIGUSR1 (--signal) or SIGTERM; finish the step, save, exit
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, lambda s, _f: setattr(self, "stop_signal", signal.Signals(s).name))
        self._emit("on_start")
        cad = recipe.cadence
        while self.step < data.total_steps:
            stage_idx, _ = data.locate(self.step)
            lr = lr_at(self.step, data.stage_steps, recipe.training.schedule, recipe.training.optimizer)
            engine.set_lr(lr)
            result = engine.step(data.microbatches(self.step))
            self.tokens_D += data.domain_samples(self.step) * self.plan.seq_length
            self.step += 1
            if self.async_saves is not None:
                self.async_saves.poll()  # an earlier checkpoint written in the background: mark it complete
            self._emit("on_step_end", stage=stage_idx, lr=lr, result=result)
            preempted = _agree(self.stop_signal is not None, self.layout.device)
            if self.step % cad.checkpoint_every == 0 or self.step == data.total_steps or preempted:
                self._emit("on_before_checkpoint")  # e.g. flush routing counts: nothing is lost on resume
                start = time.time()
                self.save(stage_idx)
                self.untimed_s += time.time() - start  # checkpoint time is not training throughput
            if preempted:
                self._finish_saves()
                self._emit("on_end", state="preempted")
                if self.rank0:
                    ckpt.write_status(self.run.root, "preempted", step=self.step, exit_reason=f"signal {self.stop_signal}")
                    print(f"stopped by {self.stop_signal} at step {self.step}; checkpoint saved", flush=True)
                return {"step": self.step, "state": "preempted"}
            self._emit("on_after_step")  # work that must not precede the checkpoint (evaluation)
        self._finish_saves()
        self._emit("on_end", state="completed")
        if self.rank0:
            ckpt.write_status(self.run.root, "completed", step=self.step, exit_reason="finished")
        return {"step": self.step, "state": "completed", "tokens": self.tokens()}

    # ---------------------------------------------------------------- state
    def tokens(self) -> dict:
        return {d: int(t) for d, t in zip(self.data.domains, self.tokens_D)}

    def _resume(self, resume: str, reset_optimizer: bool) -> None:
        if self.rank0:
            ckpt.remove_incomplete(self.run.root)  # left by a killed run; never usable
        _barrier()
        done = ckpt.complete_checkpoints(self.run.root) if resume != "never" else []
        if done:
            ckpt.check_compatible(done[-1], self.plan.fingerprint)
            state = ckpt.load(done[-1], self.engine, self.layout.describe(), reset_optimizer=reset_optimizer)
            self.step = state["step"]
            self.tokens_D = np.array([state["tokens"][d] for d in self.data.domains], dtype=np.int64)
            self.resumed_from = {"path": done[-1], "layout": state.get("layout"), "reset_optimizer": reset_optimizer}
        elif self.recipe.training.init_from:
            path = self.recipe.training.init_from
            if not os.path.isfile(os.path.join(path, ckpt.TRAIN_STATE)):
                raise AblateError(f"{self.recipe._path}: training.init_from: {path} is not a complete checkpoint "
                                  f"(no {ckpt.TRAIN_STATE})")
            ckpt.load_model_weights(path, self.engine.modules)
            self.engine.optimizer.reload_model_params()  # fp32 main params from the loaded weights

    def save(self, stage_idx: int) -> None:
        state = {"step": self.step, "stage": self.plan.stages[stage_idx].name,
                 "consumed_samples": _consumed(self.data, self.step), "tokens": self.tokens(),
                 "plan_fingerprint": self.plan.fingerprint, "world_size": self.layout.world_size,
                 "layout": self.layout.describe()}
        ckpt.save(self.run.root, self.step, self.engine, state, self.recipe.cadence.keep_checkpoints,
                  async_saves=self.async_saves)
        if self.rank0:
            ckpt.write_status(self.run.root, "running", step=self.step)

    def _finish_saves(self) -> None:
        if self.async_saves is not None:
            self.async_saves.close()  # every checkpoint complete before the run says it stopped

    def _emit(self, event: str, **kwargs) -> None:
        for cb in self.callbacks:
            getattr(cb, event)(self, **kwargs)


def save_initial_weights(recipe_path: str, out: str) -> str:
    """Build the recipe's model (its seed's initialisation) and save it as a complete checkpoint
    at ``out``: a shared ``training.init_from`` for every run of an ablation, whatever its layout."""
    recipe = load_recipe(recipe_path)
    layout = backends.init(recipe)
    try:
        trainer = Trainer(recipe, layout, recipe.resolved_run_dir, callbacks=[])
        state = {"step": 0, "tokens": {}, "plan_fingerprint": trainer.plan.fingerprint,
                 "world_size": layout.world_size, "layout": layout.describe(), "init": True}
        parent = os.path.dirname(os.path.abspath(out))
        os.makedirs(parent, exist_ok=True)
        from ablate.train.checkpoint import save_to

        save_to(out, trainer.engine, state)
        return out
    finally:
        backends.shutdown()


def _consumed(data, step: int) -> dict:
    """Samples consumed per stage after ``step`` steps."""
    out, left = {}, step
    for s, n in zip(data.plan.stages, data.stage_steps):
        out[s.name] = min(left, n) * data.gbs
        left = max(0, left - n)
    return out


def _agree(flag: bool, device) -> bool:
    """Every rank stops at the same step if any rank was signalled."""
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def _barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()
