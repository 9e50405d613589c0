"""Checkpoints and the run directory's ``status.json``.

``<run_dir>/checkpoints/step_<N>/`` holds one ``rank<r>.pt`` per rank (model, optimizer and
RNG state: experts are sharded across expert-parallel ranks, so every rank saves its own) and
``train_state.json``, written by rank 0 *last*, after every rank has finished writing. Its
presence marks the checkpoint complete: ``--resume auto`` never picks a half-written one.
Every file is written to a temporary name and renamed.

This is the CPU backend's format (megatron-core's ``dist_checkpointing`` touches CUDA on
0.16); it follows the same contract: what a step needs to continue bitwise.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import time

import numpy as np
import torch
import torch.distributed as dist

from ablate.errors import AblateError
from ablate.io import atomic_path, write_json_atomic

TRAIN_STATE = "train_state.json"


def checkpoint_dir(run_dir: str, step: int) -> str:
    return os.path.join(run_dir, "checkpoints", f"step_{step:08d}")


def complete_checkpoints(run_dir: str) -> list[str]:
    root = os.path.join(run_dir, "checkpoints")
    if not os.path.isdir(root):
        return []
    dirs = sorted(d for d in os.listdir(root) if d.startswith("step_"))
    return [os.path.join(root, d) for d in dirs if os.path.isfile(os.path.join(root, d, TRAIN_STATE))]


def remove_incomplete(run_dir: str) -> None:
    root = os.path.join(run_dir, "checkpoints")
    if os.path.isdir(root):
        for d in os.listdir(root):
            if d.startswith("step_") and not os.path.isfile(os.path.join(root, d, TRAIN_STATE)):
                shutil.rmtree(os.path.join(root, d), ignore_errors=True)


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"])


def save(run_dir: str, step: int, model, optimizer, train_state: dict, keep: int) -> str:
    """Save from every rank; returns the checkpoint directory."""
    rank = dist.get_rank() if dist.is_initialized() else 0
    path = checkpoint_dir(run_dir, step)
    os.makedirs(path, exist_ok=True)
    _torch_save_atomic({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "rng": rng_state()},
                       os.path.join(path, f"rank{rank}.pt"))
    if dist.is_initialized():
        dist.barrier()
    if rank == 0:
        write_json_atomic(os.path.join(path, TRAIN_STATE), train_state)
        for old in complete_checkpoints(run_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    if dist.is_initialized():
        dist.barrier()
    return path


def load(path: str, model, optimizer) -> dict:
    """Load this rank's state from a complete checkpoint; returns its train_state."""
    rank = dist.get_rank() if dist.is_initialized() else 0
    with open(os.path.join(path, TRAIN_STATE)) as f:
        train_state = json.load(f)
    state = torch.load(os.path.join(path, f"rank{rank}.pt"), map_location="cpu", weights_only=False)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    set_rng_state(state["rng"])
    return train_state


def check_compatible(path: str, plan_fingerprint: str, world_size: int) -> dict:
    with open(os.path.join(path, TRAIN_STATE)) as f:
        state = json.load(f)
    if state.get("plan_fingerprint") != plan_fingerprint:
        raise AblateError(f"{path}: this checkpoint is from a different recipe or data (plan "
                          f"{state.get('plan_fingerprint')}, this run's plan {plan_fingerprint}); "
                          "use another run_dir or --resume never")
    if state.get("world_size") != world_size:
        raise AblateError(f"{path}: saved with {state.get('world_size')} processes, this run has {world_size}; "
                          "resume with the same number of processes")
    return state


def _torch_save_atomic(obj, path: str) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def write_status(run_dir: str, state: str, **extra) -> None:
    """``status.json``: state (pending/running/completed/failed/preempted), times, host, why."""
    path = os.path.join(run_dir, "status.json")
    previous = {}
    if os.path.exists(path):
        with open(path) as f:
            previous = json.load(f)
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    body = {**previous, **extra, "state": state, "updated": now, "host": socket.gethostname()}
    body.setdefault("started", now)
    write_json_atomic(path, body)
