"""The training loop: one function, read it top to bottom.

    recipe -> backend + parallel state -> plan (compiled, or checked against plan.json)
    -> megatron-core GPTModel (MoE) in megatron-core DDP -> AdamW
    -> for every step: stage's micro-batches -> per-token loss -> backward -> grad sync
       -> clip -> step -> per-domain metrics, routing counts, checkpoints, preemption

On the CPU backend the optimizer step, micro-batch loop and checkpoint format are ours (their
megatron-core counterparts allocate CUDA tensors on 0.16) and follow the same contracts.
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
from ablate.train import backend as backends
from ablate.train import checkpoint as ckpt


def train(recipe_path: str, resume: str = "auto") -> dict:
    recipe = load_recipe(recipe_path)
    layout = backends.init(recipe)
    run_dir = recipe.resolved_run_dir
    try:
        return _train(recipe, layout, run_dir, resume)
    except BaseException as exc:
        if layout.rank == 0 and os.path.isdir(run_dir) and not isinstance(exc, SystemExit):
            ckpt.write_status(run_dir, "failed", exit_reason=f"{type(exc).__name__}: {exc}"[:500])
        raise
    finally:
        backends.shutdown()


def _train(recipe: Recipe, layout, run_dir: str, resume: str) -> dict:
    from megatron.core import parallel_state

    from ablate.io import write_text_atomic
    from ablate.recipe.compile import build_stage_datasets
    from ablate.recipe.plan import make_plan
    from ablate.telemetry.loggers import JSONLLogger, MultiLogger, NoOpLogger, TensorBoardLogger
    from ablate.telemetry.routing import RoutingCapture
    from ablate.train.data import StagedData
    from ablate.train.model import count_parameters
    from ablate.train.schedule import lr_at
    from ablate.evals.in_training import due as eval_due, evaluate_live

    rank0 = layout.rank == 0
    # ---- plan: the exact data this run consumes
    plan = make_plan(recipe)
    plan_path = os.path.join(run_dir, "plan.json")
    if os.path.exists(plan_path):
        with open(plan_path) as f:
            saved = json.load(f).get("fingerprint")
        if saved != plan.fingerprint:
            raise AblateError(f"{plan_path}: compiled from a different recipe or data (plan {saved}, this recipe's "
                              f"{plan.fingerprint}); run 'ablate compile {recipe._path}' or use another run_dir")
    blends = build_stage_datasets(plan)
    if rank0:
        import yaml

        os.makedirs(run_dir, exist_ok=True)
        write_text_atomic(os.path.join(run_dir, "recipe.yaml"), yaml.safe_dump(recipe.to_dict(), sort_keys=False))
        write_text_atomic(plan_path, plan.to_json())
    data = StagedData(plan, blends, recipe.training.micro_batch_size, layout.dp_rank, layout.dp, layout.device)

    model, ddp, optimizer = build_model_and_optimizer(recipe, layout, plan.tokenizer["vocab_size"])
    opt_cfg = recipe.training.optimizer
    routing = RoutingCapture(model, len(data.domains), layout.device)
    cad = recipe.cadence

    # ---- resume
    step = 0
    tokens_D = np.zeros(len(data.domains), dtype=np.int64)  # cumulative, the run-time budget proof
    if rank0:
        ckpt.remove_incomplete(run_dir)  # left by a killed run; never usable
    if resume != "never":
        done = ckpt.complete_checkpoints(run_dir)
        if done:
            ckpt.check_compatible(done[-1], plan.fingerprint, layout.world_size)
            state = ckpt.load(done[-1], ddp, optimizer)
            step = state["step"]
            tokens_D = np.array([state["tokens"][d] for d in data.domains], dtype=np.int64)
    if rank0:
        loggers = [JSONLLogger(os.path.join(run_dir, "metrics.jsonl"), truncate_after_step=step)]
        if cad.tensorboard:
            loggers.append(TensorBoardLogger(os.path.join(run_dir, "tb"), purge_step=step + 1))
        logger = MultiLogger(loggers)
        os.makedirs(os.path.join(run_dir, "routing"), exist_ok=True)
        ckpt.write_status(run_dir, "running", step=step, total_steps=data.total_steps,
                          parameters=count_parameters(model), backend=layout.backend, world_size=layout.world_size)
        print(f"{recipe.name}: {count_parameters(model):,} parameters on {layout.backend} x {layout.world_size}, "
              f"{data.total_steps} steps in {len(plan.stages)} stage(s)" + (f", resuming at step {step}" if step else ""),
              flush=True)
    else:
        logger = NoOpLogger()

    # ---- preemption: Slurm sends SIGUSR1 (--signal) or SIGTERM; finish the step, save, exit
    stop = {"signal": None}
    for sig in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(sig, lambda s, _f: stop.__setitem__("signal", signal.Signals(s).name))

    seq = plan.seq_length
    dp_group = parallel_state.get_data_parallel_group()
    clip = recipe.training.optimizer.clip_grad
    tokens_since, t_last = 0, time.time()
    while step < data.total_steps:
        stage_idx, _ = data.locate(step)
        lr = lr_at(step, data.stage_steps, recipe.training.schedule, opt_cfg)
        for g in optimizer.param_groups:
            g["lr"] = lr
        micro = data.microbatches(step)
        loss_sum_D, count_D, grad_norm = train_step(ddp, model, optimizer, micro, routing, len(data.domains),
                                                    layout.device, clip)
        stats = torch.cat([loss_sum_D, count_D])
        dist.all_reduce(stats, group=dp_group)
        loss_sum_D, count_D = stats[: len(data.domains)], stats[len(data.domains):]
        tokens_D += data.domain_samples(step) * seq
        step += 1
        tokens_since += data.gbs * seq

        stage_end = step == sum(data.stage_steps[: stage_idx + 1])
        if step % cad.log_every == 0 or stage_end or step == data.total_steps:
            elapsed = time.time() - t_last
            metrics = {"stage": plan.stages[stage_idx].name, "lr": lr,
                       "loss": float(loss_sum_D.sum() / count_D.sum()), "grad_norm": grad_norm,
                       "tokens/s": tokens_since / max(elapsed, 1e-9)}
            for i, d in enumerate(data.domains):
                metrics[f"loss/{d}"] = float(loss_sum_D[i] / count_D[i]) if count_D[i] > 0 else None
                metrics[f"tokens/{d}"] = int(tokens_D[i])
            metrics.update(_aux_losses(len(micro)))
            logger.log(step, metrics)
            if rank0:
                rate = metrics["tokens/s"]
                remaining = (data.total_steps - step) * data.gbs * seq / max(rate, 1e-9)
                print(f"step {step}/{data.total_steps} | {metrics['stage']} | loss {metrics['loss']:.4f} | "
                      f"lr {lr:.2e} | {rate:,.0f} tok/s | ETA {_hms(remaining)}", flush=True)
            tokens_since, t_last = 0, time.time()
        preempted = _agree(stop["signal"] is not None, layout.device)
        checkpoint = step % cad.checkpoint_every == 0 or step == data.total_steps or preempted
        # a checkpoint is always a flush boundary, so a resumed run loses no routing counts
        if step % cad.routing_flush_every == 0 or checkpoint:
            counts = routing.flush(dp_group)
            if rank0 and routing.routers:
                bias = routing.expert_bias()
                _save_npz(os.path.join(run_dir, "routing", f"step_{step:08d}.npz"), domains=np.array(data.domains),
                          **counts, **({"expert_bias": bias} if bias is not None else {}))
        if checkpoint:
            state = {"step": step, "stage": plan.stages[stage_idx].name,
                     "consumed_samples": _consumed(data, step),
                     "tokens": {d: int(t) for d, t in zip(data.domains, tokens_D)},
                     "plan_fingerprint": plan.fingerprint, "world_size": layout.world_size}
            ckpt.save(run_dir, step, ddp, optimizer, state, cad.keep_checkpoints)
            if rank0:
                ckpt.write_status(run_dir, "running", step=step)
        if cad.eval_tasks and not preempted and eval_due(cad.eval_every, step, data.total_steps):
            evaluate_live(recipe, plan, run_dir, model, step, layout.device, layout.rank)
            t_last = time.time()  # evaluation time is not training throughput
        if preempted:
            if rank0:
                ckpt.write_status(run_dir, "preempted", step=step, exit_reason=f"signal {stop['signal']}")
                print(f"stopped by {stop['signal']} at step {step}; checkpoint saved", flush=True)
            logger.close()
            return {"step": step, "state": "preempted"}

    logger.close()
    if rank0:
        ckpt.write_status(run_dir, "completed", step=step, exit_reason="finished")
    return {"step": step, "state": "completed", "tokens": {d: int(t) for d, t in zip(data.domains, tokens_D)}}


def build_model_and_optimizer(recipe: Recipe, layout, vocab_size: int):
    """megatron-core GPTModel in megatron-core DDP, and AdamW (decay on matrices only)."""
    from megatron.core import parallel_state
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig

    from ablate.train.model import build_model, transformer_config

    # dense weights identical on every rank (broadcast below), experts seeded per expert-parallel rank
    torch.manual_seed(recipe.seed + 1000 * parallel_state.get_expert_model_parallel_rank())
    model = build_model(recipe, vocab_size, layout.backend)
    ddp = DistributedDataParallel(transformer_config(recipe, layout.backend),
                                  DistributedDataParallelConfig(grad_reduce_in_fp32=True), model)
    ddp.broadcast_params()
    torch.manual_seed(recipe.seed)
    opt = recipe.training.optimizer
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": opt.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}],
                                  lr=opt.lr, betas=(opt.beta1, opt.beta2), eps=opt.eps)
    return model, ddp, optimizer


def train_step(ddp, model, optimizer, micro: list, routing, num_domains: int, device, clip: float,
               telemetry: bool = True):
    """One optimizer step over this rank's micro-batches.

    Returns per-domain loss sums and token counts (this rank's; zeros when ``telemetry`` is
    off) and the gradient norm. ``telemetry=False`` skips the per-domain accounting and the
    routing capture: ``benchmarks/train_overhead.py`` measures the difference.
    """
    from megatron.core.transformer.moe.moe_utils import MoEAuxLossAutoScaler

    ddp.zero_grad_buffer()
    optimizer.zero_grad(set_to_none=True)
    local_tokens = sum(float(mb.loss_mask_BS.sum()) for mb in micro)
    # megatron-core adds the MoE aux loss's gradient scaled by this: match our loss scaling
    MoEAuxLossAutoScaler.set_loss_scale(torch.tensor(1.0 / len(micro), device=device))
    loss_sum_D = torch.zeros(num_domains, dtype=torch.float64, device=device)
    count_D = torch.zeros(num_domains, dtype=torch.float64, device=device)
    routing.enabled = telemetry
    for mb in micro:
        routing.set_batch_domains(mb.domain_B)
        loss_BS = ddp(mb.tokens_BS, mb.position_ids_BS, None, labels=mb.labels_BS)
        masked_BS = loss_BS.float() * mb.loss_mask_BS
        (masked_BS.sum() / local_tokens).backward()
        if telemetry:
            loss_sum_D.index_add_(0, mb.domain_B, masked_BS.detach().sum(1).double())
            count_D.index_add_(0, mb.domain_B, mb.loss_mask_BS.sum(1).double())
    ddp.finish_grad_sync()
    for p in model.parameters():
        p.grad = getattr(p, "main_grad", p.grad)
    grad_norm = _clip_grad_norm(model, clip)
    optimizer.step()
    return loss_sum_D, count_D, grad_norm


def _clip_grad_norm(model, max_norm: float) -> float:
    """Global L2 norm of the gradients, then scale them down to ``max_norm``.

    Expert weights are sharded across expert-parallel ranks (megatron marks them
    ``allreduce=False``), so their squared norms are summed over that group; dense weights are
    identical on every rank after the data-parallel reduction and count once.
    """
    from megatron.core import parallel_state

    dense = [p.grad for p in model.parameters() if p.grad is not None and getattr(p, "allreduce", True)]
    expert = [p.grad for p in model.parameters() if p.grad is not None and not getattr(p, "allreduce", True)]
    device = (dense or expert)[0].device
    dense_sq = sum((g.float().pow(2).sum() for g in dense), torch.zeros((), device=device))
    expert_sq = sum((g.float().pow(2).sum() for g in expert), torch.zeros((), device=device))
    if parallel_state.get_expert_model_parallel_world_size() > 1:
        dist.all_reduce(expert_sq, group=parallel_state.get_expert_model_parallel_group())
    norm = float(torch.sqrt(dense_sq + expert_sq))
    if max_norm > 0 and norm > max_norm:
        scale = max_norm / (norm + 1e-6)
        for g in dense + expert:
            g.mul_(scale)
    return norm


def _aux_losses(num_micro: int) -> dict:
    """megatron-core's per-layer MoE loss tracker (load balancing, z-loss), averaged, then cleared."""
    from megatron.core.transformer.moe import moe_utils

    out = {}
    for name, entry in moe_utils.get_moe_layer_wise_logging_tracker().items():
        values_L = entry.get("values")  # summed over micro-batches, one entry per layer (0 for dense)
        moe_layers = int((values_L != 0).sum()) if values_L is not None else 0
        if moe_layers:
            out[f"moe/{name}"] = float(values_L.float().sum()) / num_micro / moe_layers
    moe_utils.clear_aux_losses_tracker()
    return out


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


def _save_npz(path: str, **arrays) -> None:
    from ablate.io import atomic_path

    with atomic_path(path) as tmp, open(tmp, "wb") as f:  # a file object: np.savez adds no suffix
        np.savez(f, **arrays)


def _hms(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"

