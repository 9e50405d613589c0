"""Backend and parallel layout: which device, which process group, which megatron groups.

The backend is ``cuda`` when torch sees a GPU, else ``cpu``; a recipe can force either
(``training.backend``). CPU uses gloo and the adaptations in ``cpu_compat`` (applied here and
only here); CUDA uses NCCL. Launched by ``torchrun`` the world comes from its environment;
launched as a plain process it is a world of one.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import tempfile
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ablate.errors import AblateError
from ablate.recipe.schema import Recipe


@dataclass
class Layout:
    backend: str  # cpu | cuda
    rank: int
    world_size: int
    dp: int
    dp_rank: int
    device: torch.device


def pick_backend(recipe: Recipe) -> str:
    wanted = recipe.training.backend
    has_cuda = torch.cuda.is_available() and torch.cuda.device_count() > 0
    if wanted == "cuda" and not has_cuda:
        raise AblateError(f"{recipe._path}: training.backend: 'cuda' asked for, but torch sees no GPU here")
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
            store = tempfile.NamedTemporaryFile(prefix="ablate-pg-", delete=False).name
            atexit.register(_remove_store, store)  # else every run leaves one in the temp dir
            dist.init_process_group("nccl" if backend == "cuda" else "gloo", init_method=f"file://{store}",
                                    rank=0, world_size=1)
    world, rank = dist.get_world_size(), dist.get_rank()
    par = recipe.parallelism
    where = f"{recipe._path}: parallelism"
    model_parallel = par.tp * par.pp * par.cp
    if world % model_parallel:
        raise AblateError(f"{where}: tp x pp x cp = {model_parallel} does not divide the {world} processes")
    dp = world // model_parallel
    if backend == "cuda" and world > torch.cuda.device_count() * int(os.environ.get("NNODES", os.environ.get("SLURM_NNODES", 1))):
        raise AblateError(f"{where}: {world} processes but only {torch.cuda.device_count()} GPUs per node")
    if (dp * par.cp * par.tp) % par.ep:
        raise AblateError(f"{where}.ep: {par.ep} does not divide the {dp * par.cp * par.tp} data x context x tensor "
                          f"parallel ranks (world {world})")
    train = recipe.training
    if train.global_batch_size % (train.micro_batch_size * dp):
        raise AblateError(f"{recipe._path}: training.global_batch_size: {train.global_batch_size} is not a multiple "
                          f"of micro_batch_size x data-parallel size = {train.micro_batch_size} x {dp}")
    from megatron.core import parallel_state

    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel(par.tp, par.pp, context_parallel_size=par.cp,
                                                 expert_model_parallel_size=par.ep)
    device = torch.device("cuda", torch.cuda.current_device()) if backend == "cuda" else torch.device("cpu")
    return Layout(backend, rank, world, dp, parallel_state.get_data_parallel_rank(), device)


def _remove_store(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def shutdown() -> None:
    from megatron.core import parallel_state

    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()
