"""Every adaptation megatron-core 0.16 needs to train on CPU, in one place, applied only on CPU.

The model, routers, dispatchers, schedules, optimizer and checkpointing are megatron-core's own;
what changes here is only where they assume CUDA (see the design notes, MEGATRON_NOTES.md).
Each adaptation is as narrow as it can be:

1. ``torch.cuda.current_device()`` is called to *place* tensors (rotary frequencies, router
   state, optimizer buffers). On the CPU backend it answers the CPU device.
2. ``moe_utils.router_gating_linear`` reads a module global ``te_general_gemm`` that is only
   defined when Transformer Engine imports; it is defined as ``None`` (the torch path).
3. The local ``DotProductAttention`` takes its score buffer from a CUDA global memory buffer;
   the layer spec's ``core_attention`` is swapped for ``SDPACoreAttention`` (``model.py``),
   which both backends use without Transformer Engine.
4. ``device="cuda"`` literals in the pipeline schedules (the token counter), the optimizer and
   its grad clipping (found-inf flags, norms) and the dist-checkpoint exchange: each of those
   *modules* sees a stand-in for ``torch`` whose factory functions place ``"cuda"`` on the CPU.
   Nothing outside those modules is affected.
5. ``Tensor.type()`` is compared with ``'torch.cuda.FloatTensor'`` (and the half names) when
   megatron's mixed-precision optimizer sorts its parameters and when its clipping asserts fp32
   grads. The CUDA names are answered **only inside** those two calls (``cuda_type_names``).
6. ``torch.cuda.synchronize()`` in the pipeline p2p code, the async checkpoint writer and its
   call queue, and the checkpoint exchange: a no-op on CPU, scoped to those modules' stand-ins.
   (The schedules must also run with ``batch_p2p_sync=False``.)
7. The RNG tracker (``tensor_parallel.random``) keeps *CUDA* generator states per name; on CPU
   a tracker with the same contract keeps CPU generator states, so ``fork()`` draws from its
   own stream exactly as on a GPU (``CpuRNGStatesTracker``).
8. ``Tensor.cuda()`` is called by the distributed optimizer's checkpoint gather
   (``get_parameter_state_dp_zero``) and by rotary embeddings under context parallelism
   (``get_pos_emb_on_this_cp_rank``, with a pinned index tensor): inside those two calls only,
   ``.cuda()`` returns the tensor itself and pinning is dropped.

9. Activation recomputation (``tensor_parallel.checkpoint``) saves and restores the CPU
   generator, the CUDA generator and the tracker's streams around the recomputed forward. On
   CPU there is no CUDA generator: its get/set (``_get_cuda_rng_state``/``_set_cuda_rng_state``)
   answer an empty state and do nothing; the CPU generator and the tracker are still restored.

``apply()`` is idempotent and refuses to run in a process that uses CUDA; ``applied()`` says
whether it ran (a test checks that the CUDA backend never applies it).
"""

from __future__ import annotations

import contextlib
import importlib
import types

import torch

_STATE = {"applied": False, "original_current_device": None}

# modules whose ``device="cuda"`` literals and ``torch.cuda.synchronize()`` calls are redirected
# (4, 6)
CUDA_LITERAL_MODULES = (
    "megatron.core.pipeline_parallel.schedules",
    "megatron.core.pipeline_parallel.p2p_communication",
    "megatron.core.optimizer.optimizer",
    "megatron.core.optimizer.clip_grads",
    "megatron.core.optimizer.distrib_optimizer",
    "megatron.core.utils",
    "megatron.core.dist_checkpointing.strategies.filesystem_async",
    "megatron.core.dist_checkpointing.exchange_utils",
    "megatron.core.dist_checkpointing.strategies.async_utils",
    "megatron.core.models.common.embeddings.rope_utils",
)


def apply() -> None:
    if _STATE["applied"]:
        return
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        raise RuntimeError("the CPU adaptations must not be applied in a process that uses CUDA")
    import megatron.core.transformer.moe.moe_utils as moe_utils
    from megatron.core.tensor_parallel import random as mp_random

    _STATE["original_current_device"] = torch.cuda.current_device
    torch.cuda.current_device = _cpu_device  # (1)
    if not hasattr(moe_utils, "te_general_gemm"):  # (2)
        moe_utils.te_general_gemm = None
    stand_in = _CpuTorch()
    for name in CUDA_LITERAL_MODULES:  # (4, 6)
        module = importlib.import_module(name)
        if getattr(module, "torch", None) is torch:
            module.torch = stand_in
    _wrap_type_checks()  # (5)
    # (7) the tracker megatron's code asks for; model_parallel_cuda_manual_seed seeds it
    mp_random._CUDA_RNG_STATE_TRACKER = CpuRNGStatesTracker()
    mp_random._CUDA_RNG_STATE_TRACKER_INITIALIZED = True
    mp_random._get_cuda_rng_state = lambda *a, **k: torch.empty(0, dtype=torch.uint8)  # (9)
    mp_random._set_cuda_rng_state = lambda *a, **k: None
    _STATE["applied"] = True


def applied() -> bool:
    return _STATE["applied"]


def _cpu_device() -> torch.device:
    return torch.device("cpu")


def _cpu(device):
    if device is None:
        return None
    if isinstance(device, int) or str(device).startswith("cuda"):
        return torch.device("cpu")
    return device


class _CpuCuda(types.ModuleType):
    """``torch.cuda`` as seen from the redirected modules: ``synchronize`` is a no-op (6)."""

    def __init__(self):
        super().__init__("torch.cuda")

    def __getattr__(self, name):
        return getattr(torch.cuda, name)

    @staticmethod
    def synchronize(device=None):
        return None


class _CpuTorch(types.ModuleType):
    """``torch`` as seen from the redirected modules: factories place ``"cuda"`` on the CPU (4)."""

    _FACTORIES = (
        "tensor",
        "zeros",
        "ones",
        "empty",
        "full",
        "arange",
        "zeros_like",
        "ones_like",
        "empty_like",
        "full_like",
        "randn",
        "rand",
    )

    def __init__(self):
        super().__init__("torch")
        self.cuda = _CpuCuda()
        for name in self._FACTORIES:
            setattr(self, name, self._placed(getattr(torch, name)))

    def __getattr__(self, name):
        return getattr(torch, name)

    @staticmethod
    def _placed(fn):
        def factory(*args, **kwargs):
            if "device" in kwargs:
                kwargs["device"] = _cpu(kwargs["device"])
            kwargs.pop("pin_memory", None)
            return fn(*args, **kwargs)

        factory.__name__ = fn.__name__
        return factory


_CUDA_NAMES = {
    torch.float32: "torch.cuda.FloatTensor",
    torch.float16: "torch.cuda.HalfTensor",
    torch.bfloat16: "torch.cuda.BFloat16Tensor",
}
_TYPE_SCOPE = {"depth": 0}
_ORIGINAL_TYPE = torch.Tensor.type


def _scoped_type(self, dtype=None, non_blocking=False, **kwargs):
    if dtype is None and _TYPE_SCOPE["depth"] and self.dtype in _CUDA_NAMES:
        return _CUDA_NAMES[self.dtype]
    if dtype is None:
        return _ORIGINAL_TYPE(self)
    return _ORIGINAL_TYPE(self, dtype, non_blocking, **kwargs)


@contextlib.contextmanager
def cuda_type_names():
    """Inside this block (only), ``Tensor.type()`` answers the CUDA type names (5)."""
    _TYPE_SCOPE["depth"] += 1
    try:
        yield
    finally:
        _TYPE_SCOPE["depth"] -= 1


def type_names_scoped() -> bool:
    """Whether ``Tensor.type()`` answers CUDA names right now (tests: never outside the scope)."""
    return _TYPE_SCOPE["depth"] > 0


def _wrap_type_checks() -> None:
    """Enter ``cuda_type_names`` around megatron's param sorting and fp32 grad clipping only."""
    from megatron.core.optimizer import clip_grads, distrib_optimizer
    from megatron.core.optimizer import optimizer as mp_optimizer

    torch.Tensor.type = _scoped_type  # answers the real name whenever the scope is not entered

    def scoped(fn):
        def wrapper(*args, **kwargs):
            with cuda_type_names():
                return fn(*args, **kwargs)

        wrapper.__wrapped__ = fn
        return wrapper

    # the optimizer module imported the clip function by name: wrap its reference there
    mp_optimizer.clip_grad_by_total_norm_fp32 = scoped(clip_grads.clip_grad_by_total_norm_fp32)
    for cls in (
        mp_optimizer.Float16OptimizerWithFloat16Params,
        distrib_optimizer.DistributedOptimizer,
    ):
        cls.__init__ = scoped(cls.__init__)  # sorts its params by type name (and builds the groups)

    # (8) ``Tensor.cuda()`` is the identity only inside these two calls
    distrib_optimizer.DistributedOptimizer.get_parameter_state_dp_zero = _cuda_is_identity(
        distrib_optimizer.DistributedOptimizer.get_parameter_state_dp_zero
    )
    from megatron.core.models.common.embeddings import rope_utils, rotary_pos_embedding

    cp_slice = _cuda_is_identity(rope_utils.get_pos_emb_on_this_cp_rank)
    rope_utils.get_pos_emb_on_this_cp_rank = cp_slice
    rotary_pos_embedding.get_pos_emb_on_this_cp_rank = cp_slice  # imported there by name


def _cuda_is_identity(fn):
    def wrapper(*args, **kwargs):
        original = torch.Tensor.cuda
        torch.Tensor.cuda = lambda t, *a, **k: t
        try:
            return fn(*args, **kwargs)
        finally:
            torch.Tensor.cuda = original

    wrapper.__wrapped__ = fn
    return wrapper


class CpuRNGStatesTracker:
    """megatron's ``CudaRNGStatesTracker`` contract over CPU generator states (7).

    ``add(name, seed)`` records the state ``torch.manual_seed(seed)`` gives without disturbing the
    default stream; ``fork(name)`` runs its block on that named stream and saves where it ended.
    """

    def __init__(self):
        self.reset()

    def is_initialized(self):
        return self._is_initialized

    def reset(self):
        self._is_initialized = False
        self.states_ = {}
        self.seeds_ = set()

    def get_states(self):
        return {k: v.clone() for k, v in self.states_.items()}

    def set_states(self, states):
        self._is_initialized = True
        self.states_ = {k: v.clone() for k, v in states.items()}

    def add(self, name, seed):
        self._is_initialized = True
        if seed in self.seeds_:
            raise Exception(f"seed {seed} already exists")
        self.seeds_.add(seed)
        if name in self.states_:
            raise Exception(f"rng state {name} already exists")
        original = torch.get_rng_state()
        torch.manual_seed(seed)
        self.states_[name] = torch.get_rng_state()
        torch.set_rng_state(original)

    @contextlib.contextmanager
    def fork(self, name="model-parallel-rng"):
        if name not in self.states_:
            raise Exception(f"rng state {name} is not added")
        original = torch.get_rng_state()
        torch.set_rng_state(self.states_[name])
        try:
            yield
        finally:
            self.states_[name] = torch.get_rng_state()
            torch.set_rng_state(original)
