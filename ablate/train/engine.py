"""megatron-core's own training engine, on both backends.

    model chunks (one per virtual pipeline stage: pre_process / post_process / vp_stage)
    -> megatron DDP (grad buffers, bucketed reduction, overlap on CUDA)
    -> get_megatron_optimizer (Adam; fp32 main params for bf16/fp16; distributed optimizer)
    -> one step = get_forward_backward_func() (no pipelining, 1F1B or interleaved 1F1B)
       over the step's micro-batches, finalize_model_grads (DP/SP/embedding reductions,
       expert-bias update, per-token normalisation), optimizer.step() (TP/PP/EP-correct clip)

The loss function is the per-token loss summed with its token count (megatron divides the
gradients by the global token count), and it also does the per-domain accounting: loss sums
and token counts per domain come from the last pipeline stage; routing counts from every stage.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
import torch.distributed as dist

from ablate.recipe.schema import Recipe


@dataclass
class StepResult:
    loss_sum_D: torch.Tensor  # this step's per-domain loss sums over the whole global batch
    count_D: torch.Tensor  # and token counts (equal on every rank after the step)
    grad_norm: float
    skipped: bool  # fp16 loss scaling found inf/nan and skipped the update


class Engine:
    """Model chunks, their optimizer and one training step. ``chunks`` are DDP-wrapped."""

    def __init__(self, recipe: Recipe, layout, vocab_size: int, num_domains: int):
        from megatron.core import parallel_state as ps
        from megatron.core.distributed import (
            DistributedDataParallel,
            DistributedDataParallelConfig,
            finalize_model_grads,
        )
        from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
        from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed
        from megatron.core.transformer.module import Float16Module

        from ablate.train.model import build_model, transformer_config

        self.recipe, self.layout, self.num_domains = recipe, layout, num_domains
        par, train = recipe.parallelism, recipe.training
        # one config object for every chunk and for DDP: the schedule reads its hooks
        # (grad_scale_func, finalize_model_grads_func, no_sync_func) from DDP's
        self.config = transformer_config(recipe, layout.backend)
        # megatron's named RNG streams (tensor-parallel, expert-parallel, data-parallel); the
        # CUDA build draws its weights from them, and dropout does on both backends
        model_parallel_cuda_manual_seed(recipe.seed)
        # CPU init draws every weight from the default stream: dense weights are broadcast from
        # data-parallel rank 0 below; experts differ per expert-parallel rank
        torch.manual_seed(recipe.seed + 1000 * ps.get_expert_model_parallel_rank())
        vp = par.vp if par.pp > 1 and par.vp > 1 else None
        modules = []
        for v in range(vp or 1):
            stage = v if vp else None
            modules.append(
                build_model(
                    recipe,
                    vocab_size,
                    layout.backend,
                    pre_process=ps.is_pipeline_first_stage(ignore_virtual=False, vp_stage=stage),
                    post_process=ps.is_pipeline_last_stage(ignore_virtual=False, vp_stage=stage),
                    vp_stage=stage,
                    config=self.config,
                )
            )
        self.modules = modules  # unwrapped GPTModels, for routing hooks and checkpoints
        half = train.precision in ("bf16", "fp16")
        wrapped = [Float16Module(self.config, m) if half else m for m in modules]
        ddp_config = DistributedDataParallelConfig(
            grad_reduce_in_fp32=True,
            use_distributed_optimizer=par.distributed_optimizer,
            overlap_grad_reduce=par.overlap_grad_reduce,
            overlap_param_gather=par.overlap_param_gather,
            check_for_nan_in_grad=False,
        )  # bucket size: megatron's default (one bucket without overlap)
        # only the first chunk's buffers are bucketed: later chunks' grads are reduced at the end
        self.chunks = [
            DistributedDataParallel(self.config, ddp_config, m, disable_bucketing=i > 0)
            for i, m in enumerate(wrapped)
        ]
        for chunk in self.chunks:
            chunk.broadcast_params()
        torch.manual_seed(recipe.seed)
        opt = train.optimizer
        self.optimizer = get_megatron_optimizer(
            OptimizerConfig(
                optimizer="adam",
                lr=opt.lr,
                min_lr=opt.min_lr,
                weight_decay=opt.weight_decay,
                adam_beta1=opt.beta1,
                adam_beta2=opt.beta2,
                adam_eps=opt.eps,
                clip_grad=opt.clip_grad,
                bf16=train.precision == "bf16",
                fp16=train.precision == "fp16",
                params_dtype=self.config.params_dtype,
                use_distributed_optimizer=par.distributed_optimizer,
                overlap_param_gather=par.overlap_param_gather,
            ),
            self.chunks,
        )
        cfg = self.config
        cfg.grad_scale_func = self.optimizer.scale_loss
        cfg.finalize_model_grads_func = finalize_model_grads
        if par.overlap_grad_reduce:
            sync = [c.no_sync for c in self.chunks]
            cfg.no_sync_func = sync[0] if len(sync) == 1 else sync
        if par.overlap_param_gather:
            starts = [c.start_param_sync for c in self.chunks]
            cfg.param_sync_func = starts[0] if len(starts) == 1 else starts
        from megatron.core.pipeline_parallel import get_forward_backward_func

        self.forward_backward = get_forward_backward_func()
        self.vp = vp
        self.routing = None  # set by the routing callback (it needs the chunks)
        self.telemetry = (
            True  # per-domain loss sums and token counts (benchmarks turn it off to measure it)
        )
        self._step_sums = None

    # ---------------------------------------------------------------- one step
    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def step(self, micro: list) -> StepResult:
        """One optimizer step over this rank's micro-batches (the same list on every pipeline
        rank of a data-parallel replica; each stage reads only what it needs)."""
        from megatron.core import parallel_state as ps

        device = self.layout.device
        for chunk in self.chunks:
            chunk.zero_grad_buffer()
        self.optimizer.zero_grad()
        self._step_sums = (
            torch.zeros(self.num_domains, dtype=torch.float64, device=device),
            torch.zeros(self.num_domains, dtype=torch.float64, device=device),
        )
        iters = [iter(micro) for _ in self.chunks]
        self.forward_backward(
            forward_step_func=self._forward_step,
            data_iterator=iters if self.vp else iters[0],
            model=self.chunks if self.vp else self.chunks[0],
            num_microbatches=len(micro),
            # the schedule divides by cp (and tp under SP)
            seq_length=self.recipe.training.seq_length,
            micro_batch_size=self.recipe.training.micro_batch_size,
            forward_only=False,
        )
        updated, grad_norm, _ = self.optimizer.step()
        loss_sum_D, count_D = self._step_sums
        if not self.telemetry:
            return StepResult(
                loss_sum_D,
                count_D,
                float(grad_norm) if grad_norm is not None else float("nan"),
                skipped=not updated,
            )
        stats = torch.cat([loss_sum_D, count_D])
        # last stage's sums, summed over data- and context-parallel ranks, known everywhere
        dist.all_reduce(stats, group=ps.get_data_parallel_group(with_context_parallel=True))
        if ps.get_pipeline_model_parallel_world_size() > 1:
            dist.all_reduce(
                stats, group=ps.get_pipeline_model_parallel_group()
            )  # only the last stage is non-zero
        D = self.num_domains
        return StepResult(
            stats[:D],
            stats[D:],
            float(grad_norm) if grad_norm is not None else float("nan"),
            skipped=not updated,
        )

    def _forward_step(self, data_iterator, model):
        mb = next(data_iterator)
        inner = _unwrap(model)
        tokens = mb.tokens_BS if inner.pre_process else None
        labels = mb.labels_BS if inner.post_process else None
        if self.routing is None:
            return model(tokens, mb.position_ids_BS, None, labels=labels), partial(self._loss, mb)
        # routing counted in this forward only (not in a recomputation during backward, which
        # under pipelining runs while another micro-batch's domains are current)
        self.routing.set_batch_domains(mb.domain_B)
        self.routing.counting = True
        try:
            output = model(tokens, mb.position_ids_BS, None, labels=labels)
        finally:
            self.routing.counting = False
        return output, partial(self._loss, mb)

    def _loss(self, mb, loss_BS):
        """(loss sum, token count, report): megatron divides the gradients by the global count."""
        mask_BS = mb.loss_mask_BS
        masked_BS = loss_BS.float() * mask_BS
        loss_sum_D, count_D = self._step_sums
        if self.telemetry:
            with torch.no_grad():
                loss_sum_D.index_add_(0, mb.domain_B, masked_BS.detach().sum(1).double())
                count_D.index_add_(0, mb.domain_B, mask_BS.sum(1).double())
        num_tokens = mask_BS.sum().to(torch.int)
        return masked_BS.sum(), num_tokens, {"loss": masked_BS.detach().sum()}

    # ---------------------------------------------------------------- helpers
    def parameters(self):
        for m in self.modules:
            yield from m.parameters()

    def train(self) -> None:
        for c in self.chunks:
            c.train()

    def eval(self) -> None:
        for c in self.chunks:
            c.eval()


def _unwrap(model):
    while hasattr(model, "module"):
        model = model.module
    return model
