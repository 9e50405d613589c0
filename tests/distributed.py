"""Run a function on N gloo processes (OLMo-core style), for tests of distributed behaviour.

``fn(rank, *args)`` must be a module-level function (spawned processes import it); its return
value comes back, per rank, pickled through a file.
"""

from __future__ import annotations

import os
import pickle

import torch.distributed as dist
import torch.multiprocessing as mp


def run_on_ranks(fn, world_size: int, tmp_dir: str, *args) -> list:
    os.makedirs(tmp_dir, exist_ok=True)
    store = os.path.join(tmp_dir, "gloo-store")
    mp.spawn(_entry, args=(world_size, fn, store, tmp_dir, args), nprocs=world_size, join=True)
    results = []
    for rank in range(world_size):
        with open(os.path.join(tmp_dir, f"result{rank}.pkl"), "rb") as f:
            results.append(pickle.load(f))
    return results


def _entry(rank: int, world_size: int, fn, store: str, out: str, args: tuple) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world_size)
    try:
        result = fn(rank, *args)
    finally:
        dist.destroy_process_group()
    with open(os.path.join(out, f"result{rank}.pkl"), "wb") as f:
        pickle.dump(result, f)
