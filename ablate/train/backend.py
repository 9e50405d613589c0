"""Backend and parallel layout: which device, which process group, which megatron groups.

The backend is ``cuda`` when torch sees a GPU, else ``cpu``; a recipe can force either
(``training.backend``). CPU uses gloo and the adaptations in ``cpu_compat`` (applied here and
only here); CUDA uses NCCL. Launched by ``torchrun`` the world comes from its environment;
launched as a plain process it is a world of one (``process_group``: its store file is
removed at shutdown, or by the next process if this one is killed).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ablate.errors import AblateError
from ablate.recipe.schema import Recipe
from ablate.train import process_group


@dataclass
class Layout:
    backend: str  # cpu | cuda
    rank: int
    world_size: int
    dp: int
    dp_rank: int
    device: torch.device
    tp: int = 1
    pp: int = 1
    vp: int = 1
    ep: int = 1
    cp: int = 1
    cp_rank: int = 0

    def describe(self) -> dict:
        """The layout a checkpoint records (and a resume compares)."""
        return {
            "world_size": self.world_size,
            "tp": self.tp,
            "pp": self.pp,
            "vp": self.vp,
            "ep": self.ep,
            "cp": self.cp,
            "dp": self.dp,
        }


def pick_backend(recipe: Recipe) -> str:
    wanted = recipe.training.backend
    has_cuda = torch.cuda.is_available() and torch.cuda.device_count() > 0
    if wanted == "cuda" and not has_cuda:
        raise AblateError(
            f"{recipe.source}: training.backend: 'cuda' asked for, but torch sees no GPU here"
        )
    return "cuda" if wanted == "cuda" or (wanted == "auto" and has_cuda) else "cpu"


def init(recipe: Recipe) -> Layout:
    backend = pick_backend(recipe)
    if backend == "cpu":
        from ablate.train import cpu_compat

        cpu_compat.apply()
    if not dist.is_initialized():
        if "RANK" in os.environ and "WORLD_SIZE" in os.environ:  # torchrun
            if backend == "cuda":
                torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
            dist.init_process_group("nccl" if backend == "cuda" else "gloo")
        else:
            # its store file is removed at shutdown / exit, or by the next process if killed
            process_group.init_single_process_group("nccl" if backend == "cuda" else "gloo")
    world, rank = dist.get_world_size(), dist.get_rank()
    check_layout(recipe, world, backend)
    par = recipe.parallelism
    where = f"{recipe.source}: parallelism"
    model_parallel = par.tp * par.pp * par.cp
    dp = world // model_parallel
    if backend == "cuda" and world > torch.cuda.device_count() * int(
        os.environ.get("NNODES", os.environ.get("SLURM_NNODES", 1))
    ):
        raise AblateError(
            f"{where}: {world} processes but only {torch.cuda.device_count()} GPUs per node"
        )
    if (dp * par.cp * par.tp) % par.ep:
        raise AblateError(
            f"{where}.ep: {par.ep} does not divide the {dp * par.cp * par.tp} data x context x "
            "tensor "
            f"parallel ranks (world {world})"
        )
    train = recipe.training
    if train.global_batch_size % (train.micro_batch_size * dp):
        raise AblateError(
            f"{recipe.source}: training.global_batch_size: {train.global_batch_size} is not a "
            "multiple "
            f"of micro_batch_size x data-parallel size = {train.micro_batch_size} x {dp}"
        )
    from megatron.core import parallel_state

    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel(
            par.tp,
            par.pp,
            virtual_pipeline_model_parallel_size=par.vp if par.pp > 1 and par.vp > 1 else None,
            context_parallel_size=par.cp,
            expert_model_parallel_size=par.ep,
        )
    device = (
        torch.device("cuda", torch.cuda.current_device())
        if backend == "cuda"
        else torch.device("cpu")
    )
    return Layout(
        backend,
        rank,
        world,
        dp,
        parallel_state.get_data_parallel_rank(),
        device,
        tp=par.tp,
        pp=par.pp,
        vp=par.vp,
        ep=par.ep,
        cp=par.cp,
        cp_rank=parallel_state.get_context_parallel_rank(),
    )


def check_layout(recipe: Recipe, world: int, backend: str) -> None:
    """Everything about the parallel layout that can be said before any group exists, each in
    one line naming the field (pp that does not divide the layers, cp that does not divide the
    sequence, more model-parallel ranks than processes, a precision the device cannot do)."""
    par, model, train = recipe.parallelism, recipe.model, recipe.training
    where = f"{recipe.source}: parallelism"
    chunks = par.pp * (par.vp if par.pp > 1 else 1)
    if model.num_layers % chunks:
        what = f"pp x vp = {par.pp} x {par.vp}" if par.vp > 1 else f"pp = {par.pp}"
        raise AblateError(
            f"{where}.pp: {what} pipeline chunks do not divide model.num_layers = "
            f"{model.num_layers}"
        )
    if par.cp > 1 and train.seq_length % (2 * par.cp):
        raise AblateError(
            f"{where}.cp: {par.cp} needs training.seq_length divisible by 2 x cp = {2 * par.cp} "
            f"(megatron's load-balanced split), got {train.seq_length}"
        )
    if par.tp > 1 and train.seq_length % (par.tp * par.cp):
        raise AblateError(
            f"{where}.tp: sequence parallelism needs training.seq_length ({train.seq_length}) "
            f"divisible by tp x cp = {par.tp * par.cp}"
        )
    if model.num_attention_heads % par.tp:
        raise AblateError(
            f"{where}.tp: {par.tp} does not divide model.num_attention_heads = "
            f"{model.num_attention_heads}"
        )
    if model.num_experts and model.num_experts % par.ep:
        raise AblateError(
            f"{where}.ep: {par.ep} does not divide model.num_experts = {model.num_experts}"
        )
    if par.ep > 1 and not model.num_experts:
        raise AblateError(f"{where}.ep: {par.ep} needs an MoE model (model.num_experts is 0)")
    half = train.precision
    if backend == "cpu" and half == "fp16":
        raise AblateError(
            f"{recipe.source}: training.precision: fp16 is not supported on the CPU backend "
            "(use bf16 or fp32)"
        )
    if backend == "cuda" and half == "bf16" and not torch.cuda.is_bf16_supported():
        raise AblateError(
            f"{recipe.source}: training.precision: bf16 is not supported by "
            f"{torch.cuda.get_device_name()} "
            "(use fp16 or fp32)"
        )
    if backend == "cpu" and (par.overlap_grad_reduce or par.overlap_param_gather):
        raise AblateError(
            f"{where}.overlap_grad_reduce/overlap_param_gather: CUDA only (they overlap on CUDA "
            "streams)"
        )
    if backend == "cpu" and model.moe_grouped_gemm:
        raise AblateError(f"{recipe.source}: model.moe_grouped_gemm: CUDA only")
    if backend == "cpu" and model.moe_token_dispatcher_type == "alltoall":
        raise AblateError(
            f"{recipe.source}: model.moe_token_dispatcher_type: alltoall is CUDA only "
            "(it creates a CUDA stream); use allgather or auto"
        )
    # the world size last: the errors above hold at any size
    model_parallel = par.tp * par.pp * par.cp
    if model_parallel > world:
        raise AblateError(
            f"{where}: tp x pp x cp = {par.tp} x {par.pp} x {par.cp} = {model_parallel} ranks, but "
            "this "
            f"run has {world} process(es); launch with torchrun --nproc-per-node {model_parallel} "
            "(or more)"
        )
    if world % model_parallel:
        raise AblateError(
            f"{where}: tp x pp x cp = {model_parallel} does not divide the {world} processes"
        )


def shutdown() -> None:
    from megatron.core import parallel_state

    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()
    process_group.remove_own_stores()
