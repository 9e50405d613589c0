"""Checkpoints through megatron-core's ``dist_checkpointing``, and the run's ``status.json``.

``<run_dir>/checkpoints/step_<N>/``:

* ``weights/``: model and optimizer state as megatron sharded tensors (every rank writes its
  own shards once: no replica is written twice). The optimizer state uses the
  ``fully_reshardable`` format, so a checkpoint loads into another tp / pp / vp / dp / world size;
* ``rng/rank<r>.pt``: each rank's generator states (restored only at the same layout);
* ``train_state.json``: step, tokens, plan fingerprint and the layout, written by rank 0
  **last**, after every rank has finished. Its presence marks the checkpoint complete:
  ``--resume auto`` never picks a half-written one. It also holds the checkpoint's integrity
  record, ``files``: every other file's size (and sha256 where it is at most 1 MiB: the RNG
  states, megatron's metadata), taken when the files were complete.

**Choosing a checkpoint** (training's ``--resume auto`` and ``ablate eval`` alike):
``latest_complete_checkpoint(run_dir) -> (path | None, skipped)`` returns the newest complete
checkpoint that passes ``verify_checkpoint`` and, newest first, ``(path, reason)`` for every newer
one that did not (a truncated or damaged file, a damaged ``train_state.json``): the caller warns
about each (``skipped_warning``) and uses the previous complete one. ``verify_checkpoint(path)``
checks one checkpoint (None, or what is wrong in one phrase). A checkpoint written before the
record existed is checked for a readable ``train_state.json`` and a ``weights/`` directory only.

Resume at another layout loads the model through megatron's resharding. The optimizer state
follows, except across an expert-parallel change (its chained sub-optimizers differ in number):
that is one clear error naming both layouts and ``--reset-optimizer`` (model weights only).

megatron's torch-Adam fallback (no Transformer Engine or Apex: every CPU run, and GPUs without
TE) has three load bugs worked around here: the optimizer state must exist before it is loaded;
the distributed optimizer's load asks the checkpoint for a per-param ``step`` it never holds
(``KeyError: 'step'``); and ``load_state_dict`` puts one shared ``step`` tensor into every
parameter's state, which silently breaks Adam's bias correction after a resume (each param
gets its own copy).

(About 540 lines: writing, choosing, verifying and loading a checkpoint are one file format and
change together; the megatron workarounds above need the save and load paths side by side.)
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import random
import shutil
import socket

import numpy as np
import torch
import torch.distributed as dist

from ablate.errors import AblateError
from ablate.faults import disk_full
from ablate.io import atomic_path, read_json, utc_timestamp, write_json_atomic, write_text_atomic
from ablate.run_layout import RunLayout

TRAIN_STATE = "train_state.json"
FILES = "files"  # train_state.json's integrity record: relative path -> [size, sha256 or None]
HASH_LIMIT = 1 << 20  # files up to this size are hashed too (cheap: RNG states, metadata)
WEIGHTS = "weights"
# the optimizer's format: reshardable across every layout change megatron supports
OPTIMIZER_METADATA = {
    "distrib_optim_sharding_type": "fully_reshardable",
    "chained_optim_avoid_prefix": True,
}


def checkpoint_dir(run_dir: str, step: int) -> str:
    return RunLayout(run_dir).checkpoint(step)


def complete_checkpoints(run_dir: str) -> list[str]:
    return RunLayout(run_dir).complete_checkpoints()


def integrity_record(path: str) -> dict:
    """``{relative path: [size, sha256 or None]}`` of every file under the checkpoint ``path``
    except ``train_state.json`` (which carries the record)."""
    import hashlib

    record = {}
    for dirpath, _dirs, names in os.walk(path):
        for name in names:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, path)
            if rel == TRAIN_STATE or ".tmp-" in name:
                continue
            size = os.path.getsize(full)
            digest = None
            if size <= HASH_LIMIT:
                with open(full, "rb") as f:
                    digest = hashlib.sha256(f.read()).hexdigest()
            record[rel] = [size, digest]
    return dict(sorted(record.items()))


def verify_checkpoint(path: str) -> str | None:
    """None if the checkpoint at ``path`` is complete and undamaged, else what is wrong (one
    phrase naming the file). Reads only sizes and the small files' hashes: cheap."""
    import hashlib

    state_path = os.path.join(path, TRAIN_STATE)
    try:
        with open(state_path, encoding="utf-8") as f:
            state = json.load(f)
    except FileNotFoundError:
        return f"no {TRAIN_STATE} (incomplete)"
    except (OSError, ValueError) as exc:
        return f"{TRAIN_STATE} is damaged ({type(exc).__name__})"
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        return f"{TRAIN_STATE} is damaged (no step)"
    record = state.get(FILES)
    if record is None:  # written before the record existed
        return None if os.path.isdir(os.path.join(path, WEIGHTS)) else f"no {WEIGHTS}/ directory"
    if not isinstance(record, dict) or not record:
        return f"{TRAIN_STATE} is damaged (its file record)"
    for rel, entry in record.items():
        full = os.path.join(path, rel)
        try:
            size = os.path.getsize(full)
        except OSError:
            return f"{rel} is missing"
        if not isinstance(entry, list) or len(entry) != 2 or size != entry[0]:
            written = entry[0] if isinstance(entry, list) and entry else "?"
            return f"{rel} is damaged ({size} bytes, {written} written)"
        if entry[1] is not None:
            try:
                with open(full, "rb") as f:
                    digest = hashlib.sha256(f.read()).hexdigest()
            except OSError as exc:
                return f"{rel} cannot be read ({exc.strerror or type(exc).__name__})"
            if digest != entry[1]:
                return f"{rel} is damaged (its content changed)"
    return None


def latest_complete_checkpoint(run_dir: str) -> tuple[str | None, list[tuple[str, str]]]:
    """The newest checkpoint of ``run_dir`` that is complete and passes ``verify_checkpoint``
    (None if there is none), and ``(path, reason)`` for each newer complete one that failed it,
    newest first. The one rule for ``train --resume auto`` and ``ablate eval``."""
    skipped = []
    for path in reversed(complete_checkpoints(run_dir)):
        reason = verify_checkpoint(path)
        if reason is None:
            return path, skipped
        skipped.append((path, reason))
    return None, skipped


def skipped_warning(path: str, reason: str, instead: str | None) -> str:
    """The warning line for a damaged checkpoint passed over."""
    then = (
        f"using the previous complete one, {instead}"
        if instead
        else "no earlier complete checkpoint"
    )
    return f"warning: {path}: damaged checkpoint, skipped ({reason}); {then}"


def remove_incomplete(run_dir: str) -> None:
    root = RunLayout(run_dir).checkpoints
    if os.path.isdir(root):
        for d in os.listdir(root):
            if d.startswith("step_") and not os.path.isfile(os.path.join(root, d, TRAIN_STATE)):
                shutil.rmtree(os.path.join(root, d), ignore_errors=True)


def rng_state() -> dict:
    from megatron.core.tensor_parallel import get_cuda_rng_tracker

    state = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
        "tracker": get_cuda_rng_tracker().get_states(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    from megatron.core.tensor_parallel import get_cuda_rng_tracker

    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    get_cuda_rng_tracker().set_states(state["tracker"])
    if "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"])


def prepare_writer() -> None:
    """Start megatron's checkpoint-writer results queue now, in a helper process that survives
    signals sent to the trainer's process group (see ``writer_guard``). Call before the
    trainer installs its signal handlers; idempotent."""
    import multiprocessing
    from multiprocessing.managers import SyncManager

    from megatron.core.dist_checkpointing.strategies import filesystem_async

    from ablate.train.writer_guard import ignore_signals_and_follow_parent

    if filesystem_async._results_queue is not None:
        return
    manager = SyncManager(ctx=multiprocessing.get_context("spawn"))
    manager.start(initializer=ignore_signals_and_follow_parent, initargs=(os.getpid(),))
    _WRITER["manager"] = manager  # kept alive with the process
    filesystem_async._results_queue = manager.Queue()


_WRITER: dict = {}


def _model_state(modules) -> dict:
    """megatron's sharded state dict of every chunk: tensor keys are global (layer offsets,
    expert numbers), so any pipeline / virtual / expert split of the same model loads them."""
    if len(modules) == 1:
        return {"model": modules[0].sharded_state_dict()}
    return {f"model{i}": m.sharded_state_dict() for i, m in enumerate(modules)}


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


class AsyncSaves:
    """Checkpoints written in the background (megatron's async ``dist_checkpointing`` save): the
    tensors are copied off the GPU at the step, the files are written by a helper process while
    training goes on, and ``train_state.json`` (the completeness mark) is written only once
    every rank's files are on disk, when ``poll`` or ``wait`` finalizes the save."""

    def __init__(self):
        from megatron.core.dist_checkpointing.strategies.async_utils import AsyncCallsQueue

        self.queue = AsyncCallsQueue()

    def poll(self) -> None:
        """Finalize saves that every rank has finished (collective; call once per step)."""
        self.queue.maybe_finalize_async_calls(blocking=False)

    def wait(self) -> None:
        """Finalize every pending save (collective): before exit, preemption or evaluation."""
        self.queue.maybe_finalize_async_calls(blocking=True)

    def close(self) -> None:
        self.wait()
        self.queue.close()


def save(
    run_dir: str,
    step: int,
    engine,
    train_state: dict,
    keep: int,
    async_saves: AsyncSaves | None = None,
) -> str:
    """Save ``checkpoints/step_<N>`` from every rank (collective), keep the newest ``keep``
    complete ones (after this one is complete: at once, or when its async save finalizes)."""
    rank = dist.get_rank() if dist.is_initialized() else 0

    def prune():
        if rank == 0:
            for old in complete_checkpoints(run_dir)[:-keep]:
                shutil.rmtree(old, ignore_errors=True)

    path = save_to(checkpoint_dir(run_dir, step), engine, train_state, async_saves, then=prune)
    if async_saves is None:
        _barrier()
    return path


def save_to(
    path: str, engine, train_state: dict, async_saves: AsyncSaves | None = None, then=None
) -> str:
    """Model, optimizer and RNG into ``path`` from every rank (collective); ``train_state.json``
    last, once every rank's files are written (with ``async_saves``: when the save finalizes)."""
    from megatron.core import dist_checkpointing

    rank = dist.get_rank() if dist.is_initialized() else 0
    weights = os.path.join(path, WEIGHTS)
    # its writer logs a failed write before raising it: the raise is reported, in one line
    logging.getLogger("megatron.core.dist_checkpointing.strategies.filesystem_async").setLevel(
        logging.CRITICAL
    )
    if rank == 0:
        if os.path.isdir(path):  # an incomplete one of a killed run: never reused
            shutil.rmtree(path)
        os.makedirs(weights)
        os.makedirs(os.path.join(path, "rng"))
    _barrier()
    state = _model_state(engine.modules)
    _ensure_optimizer_state(
        engine.optimizer
    )  # before the first step (an initial checkpoint) there is none
    state["optimizer"] = engine.optimizer.sharded_state_dict(state, metadata=OPTIMIZER_METADATA)
    with atomic_path(os.path.join(path, "rng", f"rank{rank}.pt")) as tmp:
        torch.save(rng_state(), tmp)

    def mark_complete():
        if rank == 0:  # every rank's files are written: record them, then mark complete
            body = {**train_state, FILES: integrity_record(path)}
            write_text_atomic(os.path.join(path, TRAIN_STATE), json.dumps(body, indent=1) + "\n")
        if then is not None:
            then()

    if async_saves is not None:
        request = dist_checkpointing.save(
            state, weights, content_metadata=OPTIMIZER_METADATA, async_sharded_save=True
        )
        request.add_finalize_fn(mark_complete)  # runs on every rank once all of them have written
        async_saves.queue.schedule_async_request(request)
        return path
    try:
        dist_checkpointing.save(state, weights, content_metadata=OPTIMIZER_METADATA)
        _barrier()
        mark_complete()
    except BaseException as exc:
        full = not isinstance(exc, (KeyboardInterrupt, SystemExit)) and disk_full(
            path
        )  # before the cleanup
        if rank == 0 and not os.path.isfile(os.path.join(path, TRAIN_STATE)):
            shutil.rmtree(path, ignore_errors=True)  # ours, half-written: free the space it held
        if full:
            # torch's zip writer reports a full disk as "unexpected pos": name the cause
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path) from exc
        raise
    _barrier()
    return path


def read_train_state(path: str) -> dict:
    state = read_json(os.path.join(path, TRAIN_STATE), "checkpoint state")
    if not isinstance(state, dict):
        raise AblateError(
            f"{os.path.join(path, TRAIN_STATE)}: damaged checkpoint state, not a JSON object"
        )
    return state


def load(path: str, engine, layout: dict, reset_optimizer: bool = False) -> dict:
    """Load a complete checkpoint into ``engine`` (collective); returns its train_state.

    Same layout: model, optimizer and RNG, bitwise. Another layout: model and optimizer
    resharded by megatron (RNG streams are per rank and start afresh). ``reset_optimizer``:
    model weights only.
    """
    from megatron.core import dist_checkpointing

    train_state = read_train_state(path)
    saved = train_state.get("layout", {})
    same = saved == layout
    if not reset_optimizer and not same and saved.get("ep") != layout.get("ep"):
        raise AblateError(
            f"{path}: saved with {_describe(saved)}, this run is {_describe(layout)}: megatron "
            "cannot reshard the "
            "optimizer state across an expert-parallel change; resume with --reset-optimizer "
            "(model weights only, "
            "the optimizer starts fresh) or with ep=" + str(saved.get("ep"))
        )
    state = _model_state(engine.modules)
    if not reset_optimizer:
        # the torch-Adam fallback creates its state lazily: it must exist to be loaded into
        _init_optimizer_state(engine.optimizer)
        state["optimizer"] = engine.optimizer.sharded_state_dict(
            state, is_loading=True, metadata=OPTIMIZER_METADATA
        )
    try:
        loaded = dist_checkpointing.load(state, os.path.join(path, WEIGHTS))
    except Exception as exc:  # damage its record could not see (a same-size change in a large file)
        raise AblateError(
            f"{path}: cannot be loaded ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:200] if str(exc) else ''}); "
            "move it aside to resume from the previous checkpoint"
        ) from exc
    for key, module in zip(sorted(k for k in loaded if k.startswith("model")), engine.modules):
        module.load_state_dict(loaded[key], strict=True)
    if reset_optimizer:
        engine.optimizer.reload_model_params()  # fp32 main params from the loaded weights
    else:
        with _step_restored_by_param_groups(engine.optimizer):
            engine.optimizer.load_state_dict(loaded["optimizer"])
        _unshare_adam_step(engine.optimizer)
    rank = dist.get_rank() if dist.is_initialized() else 0
    rng = os.path.join(path, "rng", f"rank{rank}.pt")
    if same and os.path.isfile(rng):
        try:
            rng_saved = torch.load(rng, map_location="cpu", weights_only=False)
        except Exception as exc:
            raise AblateError(
                f"{rng}: damaged ({type(exc).__name__}); move the checkpoint aside to resume from "
                "the previous one"
            ) from exc
        set_rng_state(rng_saved)
    return train_state


def load_model_weights(path: str, modules) -> None:
    """Only the model weights of a complete checkpoint, any layout, into ``modules`` (collective;
    one process for ``ablate eval``, or every rank of a run that starts from them)."""
    from megatron.core import dist_checkpointing

    weights = os.path.join(path, WEIGHTS)
    if not os.path.isdir(weights):
        raise AblateError(
            f"{path}: no {WEIGHTS}/ directory here (not a checkpoint written by this version of "
            "ablate)"
        )
    state = _model_state(modules)
    try:
        loaded = dist_checkpointing.load(state, weights)
    except Exception as exc:
        raise AblateError(
            f"{path}: its weights do not fit this model ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:300]})"
        ) from exc
    for key, module in zip(sorted(k for k in loaded if k.startswith("model")), modules):
        module.load_state_dict(loaded[key], strict=True)


def _init_optimizer_state(optimizer) -> None:
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        if hasattr(opt, "_init_optimizer_states_with_dummy_values"):
            opt._init_optimizer_states_with_dummy_values()
        elif getattr(opt, "init_state_fn", None) is not None:
            opt.init_state_fn(opt.optimizer, opt.config)


def _ensure_optimizer_state(optimizer) -> None:
    """Create the (zero) Adam state where none exists yet; existing state is left as it is."""
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        inner = getattr(opt, "optimizer", None)
        if inner is not None and not inner.state:
            _init_optimizer_state(opt)


@contextlib.contextmanager
def _step_restored_by_param_groups(optimizer):
    """The distributed optimizer's fully-reshardable load copies every state tensor a param has
    from the checkpoint, but the checkpoint holds no per-param ``step`` (torch Adam's; megatron
    restores it from the param groups just before): the copy raised ``KeyError: 'step'``. While
    loading, the copy leaves ``step`` as the param-group restore set it."""
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    patched = []
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        if isinstance(opt, DistributedOptimizer):
            original = opt._set_main_param_and_optimizer_states

            def setter(model_param, tensors, _opt=opt, _original=original):
                if "step" in tensors:
                    return _original(model_param, tensors)
                group_index, group_order = _opt.model_param_group_index_map[model_param]
                state = _opt.optimizer.state[
                    _opt.optimizer.param_groups[group_index]["params"][group_order]
                ]
                step = state.pop("step", None)
                try:
                    return _original(model_param, tensors)
                finally:
                    if step is not None:
                        state["step"] = step

            opt._set_main_param_and_optimizer_states = setter
            patched.append(opt)
    try:
        yield
    finally:
        for opt in patched:
            del opt._set_main_param_and_optimizer_states  # the class's method again


def _unshare_adam_step(optimizer) -> None:
    """torch's Adam keeps ``step`` per parameter; megatron's load hands all of them one tensor."""
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        inner = getattr(opt, "optimizer", None)
        if inner is None:
            continue
        for st in inner.state.values():
            if isinstance(st.get("step"), torch.Tensor):
                st["step"] = st["step"].clone()


def _describe(layout: dict) -> str:
    keys = ("world_size", "tp", "pp", "vp", "ep", "cp", "dp")
    return "(" + ", ".join(f"{k}={layout.get(k)}" for k in keys if k in layout) + ")"


def check_compatible(path: str, plan_fingerprint: str) -> dict:
    state = read_train_state(path)
    if state.get("plan_fingerprint") != plan_fingerprint:
        raise AblateError(
            f"{path}: this checkpoint is from a different recipe or data (plan "
            f"{state.get('plan_fingerprint')}, this run's plan {plan_fingerprint}); "
            "use another run_dir or --resume never"
        )
    return state


def write_status(run_dir: str, state: str, **extra) -> None:
    """``status.json``: state (pending/running/completed/failed/preempted), times, host, why.
    A damaged earlier status is replaced (the refusal to start over one is ``loop.preflight``'s);
    a full or read-only disk is an ``AblateError`` naming the file."""
    path = RunLayout(run_dir).status
    previous = {}
    if os.path.exists(path):
        try:
            previous = read_json(path, "status file")
        except AblateError:
            previous = {}
        previous = previous if isinstance(previous, dict) else {}
    now = utc_timestamp()
    body = {**previous, **extra, "state": state, "updated": now, "host": socket.gethostname()}
    body.setdefault("started", now)
    write_json_atomic(path, body)


def read_status(run_dir: str) -> dict | None:
    """The run's ``status.json`` (None if there is none); a damaged one is one line naming it."""
    path = RunLayout(run_dir).status
    if not os.path.lexists(path):
        return None
    status = read_json(path, "status file")
    if not isinstance(status, dict) or not isinstance(status.get("state"), str):
        raise AblateError(
            f"{path}: damaged status file, not a JSON object with a 'state' (remove it: training "
            "writes a new one)"
        )
    return status
