"""The trainer: read it top to bottom.

    recipe -> backend + parallel state -> plan (compiled, or checked against plan.json)
    -> Engine (megatron-core GPTModel chunks in megatron DDP, megatron's optimizer, schedules)
    -> resume (latest complete checkpoint, any layout) or init_from (weights only)
    -> for every step: LR -> engine.step(this rank's micro-batches) -> tokens per domain
       -> callbacks (metrics, routing counts, in-training eval, ...) -> checkpoint / preemption

Faults (``train``): refusals come first, before anything is written (``preflight``); the run
directory is then locked (``<run>/.lock``, held by rank 0: a second ``ablate train`` of it is
refused in one line). Whatever ends a run early (an exception, a full disk, SIGTERM before
training began) leaves ``status.json`` at ``failed``, or says in the error line that it could not
be written; a run that had completed stays ``completed``. A full or read-only disk is one line
naming the file, exit 2 like every condition the user must fix. ``--resume auto`` passes over
a damaged newest checkpoint with a warning line (``checkpoint.latest_complete_checkpoint``).

What is not the loop's business is a callback, attached from the top (``cli.py`` /
``launchers/pretrain.py``): per-domain metrics and telemetry, routing capture, evaluation. The
loop owns only what decides control flow: the plan, checkpoints and preemption.

(About 450 lines, kept in one file on purpose: nanoGPT's rule, a training loop read top to
bottom, with its start, failure and end paths beside it.)
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time

import numpy as np
import torch
import torch.distributed as dist

from ablate.errors import AblateError
from ablate.faults import Terminated, terminated_as_exception, user_os_error
from ablate.io import (
    exclusive_lock,
    os_error_line,
    os_errors,
    read_json,
    remove_stale_temporaries,
    utc_timestamp,
)
from ablate.recipe.schema import Recipe, load_recipe
from ablate.run_layout import RunLayout, refuse_non_directory, run_lock
from ablate.train import backend as backends
from ablate.train import checkpoint as ckpt
from ablate.train import process_group
from ablate.train.callbacks import Callback, default_callbacks


def train(
    recipe_path: str,
    resume: str = "auto",
    reset_optimizer: bool = False,
    callbacks: list[Callback] | None = None,
) -> dict:
    """Train ``recipe_path`` in its run directory; see the module doc for faults and refusals."""
    process_group.follow_parent_under_torchrun()  # a SIGKILLed torchrun agent: SIGTERM, no orphan
    recipe = load_recipe(recipe_path)
    run_dir = recipe.resolved_run_dir
    plan = preflight(recipe, resume, reset_optimizer)  # refusals, before anything is written
    # one process owns the run directory: under torchrun the job's rank 0 (the other ranks are
    # its own; a second job's rank 0 is refused and torchrun stops the rest of that job)
    rank0 = os.environ.get("RANK", "0") == "0"
    with contextlib.ExitStack() as held:
        if rank0:
            with os_errors(run_dir):
                os.makedirs(run_dir, exist_ok=True)
            held.enter_context(exclusive_lock(*run_lock(run_dir)))
            run = RunLayout(run_dir)
            for d in (run.root, run.checkpoints, run.routing_dir):  # what a killed run left
                remove_stale_temporaries(d)
        held.enter_context(terminated_as_exception())  # until the trainer's preemption handler
        layout = None
        try:
            layout = backends.init(recipe)
            trainer = Trainer(
                recipe,
                layout,
                run_dir,
                callbacks=default_callbacks(recipe) + list(callbacks or []),
                plan=plan,
            )
            return trainer.fit(resume, reset_optimizer)
        except BaseException as exc:
            if isinstance(exc, SystemExit) and exc.code in (0, None):
                raise
            _failed(run_dir, exc, rank0 if layout is None else layout.rank == 0)
        finally:
            backends.shutdown()
    raise AssertionError("unreachable")


def preflight(recipe: Recipe, resume: str, reset_optimizer: bool):
    """Everything that can refuse a run before it writes anything or starts a process group
    (each in one line): the run and cache directories are directories, the plan (manifests,
    files, budgets), the parallel layout, the run directory's own plan.json and status.json,
    and a checkpoint for ``--reset-optimizer``. Returns the plan."""
    from ablate.recipe.compile import prepare_cache_dir
    from ablate.recipe.plan import make_plan

    where = recipe.source or recipe.name
    run = RunLayout(recipe.resolved_run_dir)
    refuse_non_directory(run.root, f"{where}: run_dir")
    refuse_non_directory(recipe.data.cache_dir, f"{where}: data.cache_dir")
    plan = make_plan(recipe)
    backends.check_layout(
        recipe, int(os.environ.get("WORLD_SIZE", "1")), backends.pick_backend(recipe)
    )
    if os.path.lexists(run.plan):
        saved = read_json(run.plan, "plan")
        saved = saved.get("fingerprint") if isinstance(saved, dict) else None
        if saved != plan.fingerprint:
            raise AblateError(
                f"{run.plan}: compiled from a different recipe or data (plan {saved}, this "
                f"recipe's {plan.fingerprint}); run 'ablate compile {recipe.source}' or use "
                "another run_dir"
            )
    ckpt.read_status(run.root)  # damaged: named, not overwritten
    if reset_optimizer and (resume == "never" or not ckpt.complete_checkpoints(run.root)):
        raise AblateError(
            f"--reset-optimizer: no checkpoint to resume from in {run.checkpoints}"
            + (" (--resume never)" if resume == "never" else "")
        )
    if resume != "never":
        _resume_point(run)  # every checkpoint damaged: refused here, the run's status untouched
    prepare_cache_dir(plan.cache_dir, f"{where}: data.cache_dir")
    return plan


def _resume_point(run: RunLayout) -> tuple[str | None, list[tuple[str, str]]]:
    """``checkpoint.latest_complete_checkpoint``, refused in one line when checkpoints exist but
    every one is damaged (starting over would silently discard the run)."""
    latest, skipped = ckpt.latest_complete_checkpoint(run.root)
    if skipped and latest is None:
        raise AblateError(
            f"{run.checkpoints}: no complete checkpoint left to resume from (the newest, "
            f"{os.path.basename(skipped[0][0])}, is damaged: {skipped[0][1]}); move them aside, or "
            "use --resume never to start over"
        )
    return latest, skipped


def _failed(run_dir: str, exc: BaseException, rank0: bool):
    """Record a failed run (rank 0) and re-raise ``exc`` as what the user should see: a full or
    read-only disk as one line naming the file; SIGTERM as exit 143. A run that had completed
    stays completed (a later attempt that failed is recorded beside it)."""
    cause = None if isinstance(exc, AblateError) else user_os_error(exc)
    reason = (
        os_error_line(run_dir, cause)
        if cause is not None
        else f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
    )[:500]
    note = ""
    if rank0 and os.path.isdir(run_dir):
        try:
            previous = _previous_state(run_dir)
            if previous == "completed":
                ckpt.write_status(
                    run_dir,
                    "completed",
                    last_attempt={"state": "failed", "exit_reason": reason, "at": utc_timestamp()},
                )
            else:
                ckpt.write_status(run_dir, "failed", exit_reason=reason)
        except (AblateError, OSError) as status_exc:
            note = f"; {RunLayout(run_dir).status} could not be updated ({_short(status_exc)})"
    if isinstance(exc, Terminated):
        print(
            f"stopped by {exc} before training began; status failed{note}",
            file=sys.stderr,
            flush=True,
        )
        raise SystemExit(143) from None
    if cause is not None:
        raise AblateError(os_error_line(run_dir, cause) + note) from None
    if note and isinstance(exc, AblateError):
        raise AblateError(f"{exc}{note}") from None
    raise exc


def _previous_state(run_dir: str) -> str | None:
    try:
        status = ckpt.read_status(run_dir)
    except AblateError:
        return None
    return status.get("state") if status else None


def _short(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno is not None:
        return os.strerror(exc.errno)
    return str(exc).split(": cannot write ")[-1].strip("()")[:80]


class Trainer:
    def __init__(
        self,
        recipe: Recipe,
        layout,
        run_dir: str,
        callbacks: list[Callback],
        plan=None,
        write_run_files: bool = True,
    ):
        from ablate.io import write_text_atomic
        from ablate.recipe.compile import build_stage_datasets, cache_errors
        from ablate.recipe.plan import make_plan
        from ablate.train.data import StagedData
        from ablate.train.engine import Engine

        self.recipe, self.layout, self.run = recipe, layout, RunLayout(run_dir)
        self.rank0 = layout.rank == 0
        # ---- plan: the exact data this run consumes (checked against plan.json by preflight)
        self.plan = plan if plan is not None else make_plan(recipe)
        with cache_errors(self.plan.cache_dir):
            blends = build_stage_datasets(self.plan)
        if self.rank0 and write_run_files:
            import yaml

            os.makedirs(run_dir, exist_ok=True)
            write_text_atomic(self.run.recipe, yaml.safe_dump(recipe.to_dict(), sort_keys=False))
            write_text_atomic(self.run.plan, self.plan.to_json())
        from megatron.core import parallel_state as ps

        edge = ps.is_pipeline_first_stage(ignore_virtual=True) or ps.is_pipeline_last_stage(
            ignore_virtual=True
        )
        self.data = StagedData(
            self.plan,
            blends,
            recipe.training.micro_batch_size,
            layout.dp_rank,
            layout.dp,
            layout.device,
            layout.cp_rank,
            layout.cp,
            read_tokens=edge,
        )
        self.engine = Engine(
            recipe, layout, self.plan.tokenizer["vocab_size"], len(self.data.domains)
        )
        self.callbacks = callbacks
        self.step = 0
        self.tokens_D = np.zeros(
            len(self.data.domains), dtype=np.int64
        )  # cumulative: the run-time budget proof
        self.stop_signal: str | None = None
        self.untimed_s = (
            0.0  # seconds callbacks spent outside training (evaluation): not throughput
        )
        self.resumed_from = None
        mode = recipe.cadence.async_checkpoint
        self.async_saves = (
            ckpt.AsyncSaves()
            if mode == "on" or (mode == "auto" and layout.backend == "cuda")
            else None
        )

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
            lr = lr_at(
                self.step, data.stage_steps, recipe.training.schedule, recipe.training.optimizer
            )
            engine.set_lr(lr)
            result = engine.step(data.microbatches(self.step))
            self.tokens_D += data.domain_samples(self.step) * self.plan.seq_length
            self.step += 1
            if self.async_saves is not None:
                # an earlier checkpoint written in the background: mark it complete
                self.async_saves.poll()
            self._emit("on_step_end", stage=stage_idx, lr=lr, result=result)
            preempted = _agree(self.stop_signal is not None, self.layout.device)
            if self.step % cad.checkpoint_every == 0 or self.step == data.total_steps or preempted:
                self._emit(
                    "on_before_checkpoint"
                )  # e.g. flush routing counts: nothing is lost on resume
                start = time.time()
                self.save(stage_idx)
                self.untimed_s += time.time() - start  # checkpoint time is not training throughput
            if preempted:
                self._finish_saves()
                self._emit("on_end", state="preempted")
                if self.rank0:
                    ckpt.write_status(
                        self.run.root,
                        "preempted",
                        step=self.step,
                        exit_reason=f"signal {self.stop_signal}",
                    )
                    print(
                        f"stopped by {self.stop_signal} at step {self.step}; checkpoint saved",
                        flush=True,
                    )
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
        latest, skipped = _resume_point(self.run) if resume != "never" else (None, [])
        if self.rank0:
            for path, reason in skipped:
                print(ckpt.skipped_warning(path, reason, latest), file=sys.stderr, flush=True)
        if latest:
            ckpt.check_compatible(latest, self.plan.fingerprint)
            state = ckpt.load(
                latest, self.engine, self.layout.describe(), reset_optimizer=reset_optimizer
            )
            self.step = state["step"]
            self.tokens_D = np.array(
                [state["tokens"][d] for d in self.data.domains], dtype=np.int64
            )
            self.resumed_from = {
                "path": latest,
                "layout": state.get("layout"),
                "reset_optimizer": reset_optimizer,
            }
            if skipped:
                self.resumed_from["skipped"] = [{"path": p, "reason": r} for p, r in skipped]
        elif self.recipe.training.init_from:
            path = self.recipe.training.init_from
            reason = ckpt.verify_checkpoint(path) if os.path.isdir(path) else "no such directory"
            if reason is not None:
                raise AblateError(
                    f"{self.recipe.source}: training.init_from: {path} is not a complete "
                    f"checkpoint ({reason})"
                )
            ckpt.load_model_weights(path, self.engine.modules)
            self.engine.optimizer.reload_model_params()  # fp32 main params from the loaded weights

    def save(self, stage_idx: int) -> None:
        state = {
            "step": self.step,
            "stage": self.plan.stages[stage_idx].name,
            "consumed_samples": _consumed(self.data, self.step),
            "tokens": self.tokens(),
            "plan_fingerprint": self.plan.fingerprint,
            "world_size": self.layout.world_size,
            "layout": self.layout.describe(),
        }
        ckpt.save(
            self.run.root,
            self.step,
            self.engine,
            state,
            self.recipe.cadence.keep_checkpoints,
            async_saves=self.async_saves,
        )
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
    at ``out``: a shared ``training.init_from`` for every run of an ablation, whatever its layout.
    ``out`` must not exist yet (nothing there is replaced); the run directory is not written."""
    recipe = load_recipe(recipe_path)
    if os.path.lexists(out):
        raise AblateError(
            f"--save-init: {out} already exists (choose a new directory; nothing there is replaced)"
        )
    parent = os.path.dirname(os.path.abspath(out))
    refuse_non_directory(parent, "--save-init")
    plan = preflight(recipe, "never", False)
    layout = backends.init(recipe)
    try:
        trainer = Trainer(
            recipe, layout, recipe.resolved_run_dir, callbacks=[], plan=plan, write_run_files=False
        )
        state = {
            "step": 0,
            "tokens": {},
            "plan_fingerprint": trainer.plan.fingerprint,
            "world_size": layout.world_size,
            "layout": layout.describe(),
            "init": True,
        }
        from ablate.io import os_errors

        with os_errors(out):
            os.makedirs(parent, exist_ok=True)
            try:
                ckpt.save_to(out, trainer.engine, state)
            except BaseException:
                if layout.rank == 0:
                    import shutil

                    shutil.rmtree(out, ignore_errors=True)  # ours: it did not exist before
                raise
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
