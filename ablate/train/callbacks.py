"""Trainer callbacks: what happens around a step that is not the step itself.

Events (each gets the trainer; see ``loop.Trainer.fit``): ``on_start``; ``on_step_end(stage,
lr, result)``; ``on_before_checkpoint`` (flush what a resumed run must not lose);
``on_after_step`` (after any checkpoint: evaluation); ``on_end(state)``.

``default_callbacks`` are the metrics (per-domain loss and tokens, throughput, memory, MFU) and
the routing capture. Evaluation inside training is ``ablate.evals.callback.EvalCallback``,
attached from the top (``cli.py``), so ``ablate.train`` never imports ``ablate.evals``.
"""

from __future__ import annotations

import os
import resource
import time

import numpy as np
import torch
import torch.distributed as dist


class Callback:
    def on_start(self, trainer) -> None: ...
    def on_step_end(self, trainer, stage: int, lr: float, result) -> None: ...
    def on_before_checkpoint(self, trainer) -> None: ...
    def on_after_step(self, trainer) -> None: ...
    def on_end(self, trainer, state: str) -> None: ...


def default_callbacks(recipe) -> list[Callback]:
    return [MetricsCallback(), RoutingCallback()]


class MetricsCallback(Callback):
    """``metrics.jsonl`` (and TensorBoard, W&B) rows and the console progress line, rank 0."""

    def on_start(self, trainer) -> None:
        from ablate.telemetry.flops import device_peak_flops, flops_per_token, parameter_counts
        from ablate.telemetry.loggers import JSONLLogger, MultiLogger, NoOpLogger, TensorBoardLogger

        recipe, layout, cad = trainer.recipe, trainer.layout, trainer.recipe.cadence
        vocab = trainer.plan.tokenizer["vocab_size"]
        self.params = parameter_counts(recipe.model, vocab)
        self.flops_per_token = flops_per_token(recipe.model, vocab, recipe.training.seq_length)
        self.peak_flops = None
        if layout.backend == "cuda":
            self.peak_flops = device_peak_flops(
                torch.cuda.get_device_name(), recipe.training.precision
            )
        if trainer.rank0:
            loggers = [JSONLLogger(trainer.run.metrics, truncate_after_step=trainer.step)]
            if cad.tensorboard:
                loggers.append(
                    TensorBoardLogger(trainer.run.tensorboard, purge_step=trainer.step + 1)
                )
            if cad.wandb:
                from ablate.telemetry.loggers import WandbLogger

                w = cad.wandb
                loggers.append(
                    WandbLogger(
                        w["project"],
                        recipe.name,
                        dir=trainer.run.root,
                        config=recipe.to_dict(),
                        mode=w.get("mode"),
                        entity=w.get("entity"),
                        group=w.get("group"),
                        tags=w.get("tags"),
                        run_id=f"{recipe.name}-{trainer.plan.fingerprint}",
                        resume=trainer.step > 0,
                    )
                )
            self.logger = MultiLogger(loggers)
            from ablate.train import checkpoint as ckpt

            ckpt.write_status(
                trainer.run.root,
                "running",
                step=trainer.step,
                total_steps=trainer.data.total_steps,
                parameters=self.params["total"],
                active_parameters=self.params["active"],
                backend=layout.backend,
                world_size=layout.world_size,
                layout=layout.describe(),
                **({"resumed_from": trainer.resumed_from} if trainer.resumed_from else {}),
            )
            resumed = f", resuming at step {trainer.step}" if trainer.step else ""
            if trainer.resumed_from and trainer.resumed_from.get("reset_optimizer"):
                resumed += " (model weights only: --reset-optimizer)"
            print(
                f"{recipe.name}: {self.params['total']:,} parameters ({self.params['active']:,} "
                "active) on "
                f"{layout.backend} x {layout.world_size} {_layout_text(layout)}, "
                f"{trainer.data.total_steps} steps in "
                f"{len(trainer.plan.stages)} stage(s){resumed}",
                flush=True,
            )
        else:
            self.logger = NoOpLogger()
        if layout.backend == "cuda":
            torch.cuda.reset_peak_memory_stats()
        self.tokens_since, self.t_last, self.untimed_last = 0, time.time(), trainer.untimed_s

    def on_step_end(self, trainer, stage: int, lr: float, result) -> None:
        data, plan, layout = trainer.data, trainer.plan, trainer.layout
        step = trainer.step
        self.tokens_since += data.gbs * plan.seq_length
        stage_end = step == sum(data.stage_steps[: stage + 1])
        if not (
            step % trainer.recipe.cadence.log_every == 0 or stage_end or step == data.total_steps
        ):
            from megatron.core.transformer.moe import moe_utils

            moe_utils.clear_aux_losses_tracker()  # each logged row holds its own step's aux losses
            return
        aux = _aux_losses(trainer.engine, data.gbs // data.dp_size // data.mbs)
        # time callbacks spent outside training (evaluation) is not throughput
        elapsed = max(time.time() - self.t_last - (trainer.untimed_s - self.untimed_last), 1e-9)
        rate = self.tokens_since / elapsed
        loss_sum_D, count_D = result.loss_sum_D, result.count_D
        metrics = {
            "stage": plan.stages[stage].name,
            "lr": lr,
            "loss": float(loss_sum_D.sum() / count_D.sum()),
            "grad_norm": result.grad_norm,
            "tokens/s": rate,
            "tokens/s/device": rate / layout.world_size,
            "memory/peak_gib": _peak_memory_gib(layout.backend),
        }
        if self.peak_flops:
            from ablate.telemetry.flops import mfu

            metrics["mfu"] = mfu(rate / layout.world_size, self.flops_per_token, self.peak_flops)
        if result.skipped:
            metrics["skipped"] = True
        for i, d in enumerate(data.domains):
            metrics[f"loss/{d}"] = float(loss_sum_D[i] / count_D[i]) if count_D[i] > 0 else None
            metrics[f"tokens/{d}"] = int(trainer.tokens_D[i])
        metrics.update(aux)
        self.logger.log(step, metrics)
        if trainer.rank0:
            remaining = (data.total_steps - step) * data.gbs * plan.seq_length / max(rate, 1e-9)
            print(
                f"step {step}/{data.total_steps} | {metrics['stage']} | loss {metrics['loss']:.4f} "
                f"| lr {lr:.2e} | "
                f"{rate:,.0f} tok/s | ETA {_hms(remaining)}",
                flush=True,
            )
        self.tokens_since, self.t_last, self.untimed_last = 0, time.time(), trainer.untimed_s

    def on_end(self, trainer, state: str) -> None:
        self.logger.close()


class RoutingCallback(Callback):
    """Expert counts per layer, domain and expert -> ``routing/step_<N>.npz`` (rank 0)."""

    def on_start(self, trainer) -> None:
        from ablate.telemetry.routing import RoutingCapture

        self.capture = RoutingCapture(
            trainer.engine.modules, len(trainer.data.domains), trainer.layout.device
        )
        trainer.engine.routing = self.capture
        if trainer.rank0:
            os.makedirs(trainer.run.routing_dir, exist_ok=True)
        self.flushed_at = trainer.step

    def on_step_end(self, trainer, stage: int, lr: float, result) -> None:
        if trainer.step % trainer.recipe.cadence.routing_flush_every == 0:
            self._flush(trainer)

    def on_before_checkpoint(self, trainer) -> None:
        self._flush(
            trainer
        )  # a checkpoint is always a flush boundary: a resumed run loses no counts

    def _flush(self, trainer) -> None:
        if self.flushed_at == trainer.step:
            return
        self.flushed_at = trainer.step
        counts = self.capture.flush()
        bias = self.capture.expert_bias_all()
        if trainer.rank0 and self.capture.num_moe_layers:
            from ablate.io import atomic_path

            with atomic_path(trainer.run.routing(trainer.step)) as tmp, open(tmp, "wb") as f:
                np.savez(
                    f,
                    domains=np.array(trainer.data.domains),
                    **counts,
                    **({"expert_bias": bias} if bias is not None else {}),
                )


def _aux_losses(engine, num_micro: int) -> dict:
    """megatron-core's per-layer MoE loss tracker (load balancing, z-loss) for this step, averaged
    over MoE layers and micro-batches (summed over pipeline ranks, which hold different layers);
    cleared every step."""
    from megatron.core import parallel_state as ps
    from megatron.core.transformer.moe import moe_utils

    out = {}
    for name, entry in sorted(moe_utils.get_moe_layer_wise_logging_tracker().items()):
        values_L = entry.get("values")
        if values_L is None:
            continue
        values_L = values_L.detach().float().clone()
        if ps.get_pipeline_model_parallel_world_size() > 1:
            dist.all_reduce(values_L, group=ps.get_pipeline_model_parallel_group())
        moe_layers = int((values_L != 0).sum())
        if moe_layers:
            out[f"moe/{name}"] = float(values_L.sum()) / num_micro / moe_layers
    moe_utils.clear_aux_losses_tracker()
    return out


def _peak_memory_gib(backend: str) -> float:
    if backend == "cuda":
        return torch.cuda.max_memory_allocated() / 2**30
    return (
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    )  # KiB on Linux: the process's peak RSS


def _layout_text(layout) -> str:
    parts = [
        f"{k}{v}"
        for k, v in (
            ("tp", layout.tp),
            ("pp", layout.pp),
            ("vp", layout.vp),
            ("ep", layout.ep),
            ("cp", layout.cp),
            ("dp", layout.dp),
        )
        if v > 1
    ]
    return "(" + " ".join(parts) + ")" if parts else "(one replica)"


def _hms(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return (
        f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
        if seconds >= 3600
        else f"{seconds // 60}m{seconds % 60:02d}s"
    )
