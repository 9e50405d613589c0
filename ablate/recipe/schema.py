"""The recipe: one YAML file that says everything a run may differ in.

Validated once at load (every error: ``file: field.path: what is wrong (what is allowed)``) and
dumped resolved, with every default filled in, into the run directory. Sections:

``name, seed, run_dir, tokenizer``; ``data`` (manifests, index cache); ``model`` (a preset and/or
megatron-core fields); ``parallelism`` (tp, pp, ep, cp; dp is what the world size leaves);
``training`` (sequence length, batches, optimizer, LR schedule, precision, backend); ``cadence``
(logging, eval, checkpoints, routing flushes); ``stages`` (token budget + mix), see ``Stage``.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Optional

from ablate.errors import AblateError
from ablate.recipe.budget import parse_tokens
from ablate.validate import build_dataclass, check_choice, check_keys, check_positive, check_type, load_yaml_file

# Named model shapes. A recipe names one and may override any field. The line above each
# preset states its size as ``# NAME: total T / active A (vocab V)``, computed by
# ``ablate.telemetry.flops.parameter_counts`` for a tokenizer of V tokens (active: what one
# token uses, embedding and output layer included); tests/test_presets.py recomputes every
# figure, so a change of shape needs its comment (and the README's table) updated.
MODEL_PRESETS: dict[str, dict] = {
    # toy-moe: total 3.51M / active 1.15M (vocab 258)
    # Learns the toy world in minutes on 2 CPU cores (vocab 258: the byte tokenizer).
    # 8 heads of 16: with 4 heads the operand-retrieval circuit the math probes need had not
    # formed after 2.5M structured-math tokens; with 8 heads and 5M tokens it had (the first 8
    # held-out math problems right). Heads and tokens changed together: see README.
    "toy-moe": dict(num_layers=4, hidden_size=128, num_attention_heads=8, ffn_hidden_size=256,
                    num_experts=8, moe_router_topk=2, max_position_embeddings=512),
    # moe-100m: total 461M / active 97.4M (vocab 32000)
    # A single-GPU sanity scale; the name is its active size (16 experts of 1408, top-2).
    "moe-100m": dict(num_layers=12, hidden_size=512, num_attention_heads=8, ffn_hidden_size=1408,
                     num_experts=16, moe_router_topk=2, max_position_embeddings=2048),
    # moe-1.3b-a0.3b: total 1.30B / active 308M (vocab 32000)
    # DeepSeekMath's ablation scale (its sec. 5.1 ablations train a 1.3B model) as an MoE:
    # 24 layers of 1024 with 16 experts of 960, top-2, so that the total is 1.3B.
    "moe-1.3b-a0.3b": dict(num_layers=24, hidden_size=1024, num_attention_heads=16, ffn_hidden_size=2816,
                           moe_ffn_hidden_size=960, num_experts=16, moe_router_topk=2, max_position_embeddings=4096),
    # moe-4b-a1b: total 3.86B / active 950M (vocab 32000)
    # A dense 1.3B model's layout (24 layers of 2048) with every MLP made 16 experts of 1408,
    # top-2. It was called moe-1b, for its active size; that name still loads it.
    "moe-4b-a1b": dict(num_layers=24, hidden_size=2048, num_attention_heads=16, ffn_hidden_size=5632,
                       moe_ffn_hidden_size=1408, num_experts=16, moe_router_topk=2, max_position_embeddings=4096),
}
# Old names, kept so that recipes naming them still load (the same shape, not a copy).
MODEL_PRESETS["moe-1b"] = MODEL_PRESETS["moe-4b-a1b"]


@dataclass
class ModelConfig:
    preset: Optional[str] = None
    num_layers: int = 4
    hidden_size: int = 128
    num_attention_heads: int = 4
    ffn_hidden_size: int = 256
    moe_ffn_hidden_size: Optional[int] = None  # per expert; default: ffn_hidden_size
    num_experts: int = 8  # 0: a dense model
    moe_router_topk: int = 2
    moe_layer_freq: int = 1  # every n-th layer is MoE (1: all), the others dense
    moe_router_score_function: str = "softmax"
    moe_router_load_balancing_type: str = "aux_loss"
    moe_aux_loss_coeff: float = 0.01
    moe_z_loss_coeff: Optional[float] = None
    moe_router_enable_expert_bias: bool = False
    moe_shared_expert_intermediate_size: Optional[int] = None
    max_position_embeddings: int = 512
    position_embedding_type: str = "rope"
    normalization: str = "RMSNorm"
    make_vocab_size_divisible_by: int = 128
    init_method_std: float = 0.02
    moe_token_dispatcher_type: str = "auto"  # auto: alltoall on CUDA, allgather on CPU
    moe_grouped_gemm: bool = False  # one grouped GEMM for all local experts (CUDA)

    def validate(self, where: str) -> None:
        for f in ("num_layers", "hidden_size", "num_attention_heads", "ffn_hidden_size", "moe_layer_freq",
                  "max_position_embeddings", "make_vocab_size_divisible_by"):
            check_positive(getattr(self, f), f"{where}.{f}")
        check_positive(self.num_experts, f"{where}.num_experts", allow_zero=True)
        if self.hidden_size % self.num_attention_heads:
            raise AblateError(f"{where}.hidden_size: {self.hidden_size} is not divisible by num_attention_heads {self.num_attention_heads}")
        if self.num_experts and not 1 <= self.moe_router_topk <= self.num_experts:
            raise AblateError(f"{where}.moe_router_topk: {self.moe_router_topk} must be between 1 and num_experts ({self.num_experts})")
        check_choice(self.moe_router_score_function, ("softmax", "sigmoid"), f"{where}.moe_router_score_function")
        check_choice(self.moe_router_load_balancing_type, ("aux_loss", "seq_aux_loss", "none"), f"{where}.moe_router_load_balancing_type")
        check_choice(self.position_embedding_type, ("rope", "learned_absolute"), f"{where}.position_embedding_type")
        check_choice(self.normalization, ("RMSNorm", "LayerNorm"), f"{where}.normalization")
        check_choice(self.moe_token_dispatcher_type, ("auto", "allgather", "alltoall"), f"{where}.moe_token_dispatcher_type")
        check_type(self.moe_grouped_gemm, bool, f"{where}.moe_grouped_gemm", "true or false")
        if self.moe_router_enable_expert_bias and self.moe_router_score_function != "sigmoid":
            raise AblateError(f"{where}.moe_router_enable_expert_bias: expert bias needs moe_router_score_function: sigmoid")


@dataclass
class ParallelConfig:
    tp: int = 1
    pp: int = 1
    ep: int = 1
    cp: int = 1
    vp: int = 1  # virtual pipeline stages (model chunks) per pipeline rank: interleaved 1F1B
    distributed_optimizer: bool = False  # shard optimizer state and fp32 main params over data-parallel ranks
    overlap_grad_reduce: bool = False  # start each bucket's reduction during backward (CUDA)
    overlap_param_gather: bool = False  # distributed optimizer: gather params during the next forward (CUDA)

    def validate(self, where: str) -> None:
        for f in ("tp", "pp", "ep", "cp", "vp"):
            check_positive(getattr(self, f), f"{where}.{f}")
        for f in ("distributed_optimizer", "overlap_grad_reduce", "overlap_param_gather"):
            check_type(getattr(self, f), bool, f"{where}.{f}", "true or false")
        if self.vp > 1 and self.pp == 1:
            raise AblateError(f"{where}.vp: {self.vp} virtual pipeline stages need pp > 1 (pp is 1)")
        if self.overlap_param_gather and not self.distributed_optimizer:
            raise AblateError(f"{where}.overlap_param_gather: needs distributed_optimizer: true")


@dataclass
class OptimizerConfig:
    name: str = "adamw"
    lr: float = 3e-3
    min_lr: float = 3e-4
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    clip_grad: float = 1.0

    def validate(self, where: str) -> None:
        check_choice(self.name, ("adamw",), f"{where}.name")
        check_positive(self.lr, f"{where}.lr")
        check_positive(self.min_lr, f"{where}.min_lr", allow_zero=True)
        if self.min_lr > self.lr:
            raise AblateError(f"{where}.min_lr: {self.min_lr} is larger than lr {self.lr}")


@dataclass
class ScheduleConfig:
    warmup_steps: int = 20
    decay: str = "cosine"  # over the whole run (or per stage under 'rewarm')
    # continue: one schedule over all stages; rewarm: warm up and decay again in every stage;
    # constant_then_decay: constant LR until the last stage, which decays (WSD-style)
    stage_policy: str = "continue"

    def validate(self, where: str) -> None:
        check_positive(self.warmup_steps, f"{where}.warmup_steps", allow_zero=True)
        check_choice(self.decay, ("cosine", "linear", "constant"), f"{where}.decay")
        check_choice(self.stage_policy, ("continue", "rewarm", "constant_then_decay"), f"{where}.stage_policy")


@dataclass
class TrainingConfig:
    seq_length: int = 256
    global_batch_size: int = 32
    micro_batch_size: int = 8
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    precision: str = "fp32"  # bf16/fp16: params and compute in half, fp32 main params in the optimizer
    backend: str = "auto"  # auto: cuda when torch sees a GPU, else cpu
    recompute: str = "none"  # activation recomputation: none | selective (attention core) | full (every layer)
    # start from these model weights (a checkpoint directory, any layout) instead of a random
    # init; the optimizer starts fresh. Every run of an ablation can share one initialisation.
    init_from: Optional[str] = None

    def validate(self, where: str) -> None:
        for f in ("seq_length", "global_batch_size", "micro_batch_size"):
            check_positive(getattr(self, f), f"{where}.{f}")
        if self.global_batch_size % self.micro_batch_size:
            raise AblateError(f"{where}.global_batch_size: {self.global_batch_size} is not a multiple of "
                              f"micro_batch_size {self.micro_batch_size}")
        check_choice(self.precision, ("fp32", "bf16", "fp16"), f"{where}.precision")
        check_choice(self.backend, ("auto", "cpu", "cuda"), f"{where}.backend")
        check_choice(self.recompute, ("none", "selective", "full"), f"{where}.recompute")
        if self.init_from is not None:
            check_type(self.init_from, str, f"{where}.init_from", "a checkpoint directory")


@dataclass
class CadenceConfig:
    log_every: int = 10
    eval_every: int = 0  # with eval_tasks: every N steps and at the end (0: only at the end)
    eval_tasks: list = field(default_factory=list)  # ablate eval tasks scored inside training (none: run it after)
    eval_options: dict = field(default_factory=dict)  # e.g. {limit: 50, bpb_tokens: 16384}: as ablate eval's flags
    checkpoint_every: int = 200
    keep_checkpoints: int = 2
    routing_flush_every: int = 50
    tensorboard: bool = True
    # write checkpoints in the background (megatron's async dist_checkpointing save); auto: on CUDA
    async_checkpoint: str = "auto"
    # Weights & Biases (the optional extra 'wandb'): {project: P, mode: online|offline|disabled,
    # entity: E, group: G, tags: [...]}; empty: no W&B. A resumed run continues its W&B run.
    wandb: dict = field(default_factory=dict)

    def validate(self, where: str) -> None:
        check_choice(self.async_checkpoint, ("auto", "on", "off"), f"{where}.async_checkpoint")
        if self.wandb:
            check_keys(self.wandb, ["project", "mode", "entity", "group", "tags"], f"{where}.wandb", required=("project",))
            check_type(self.wandb["project"], str, f"{where}.wandb.project", "a W&B project name")
            if "mode" in self.wandb:
                check_choice(self.wandb["mode"], ("online", "offline", "disabled"), f"{where}.wandb.mode")
        for f in ("log_every", "checkpoint_every", "keep_checkpoints", "routing_flush_every"):
            check_positive(getattr(self, f), f"{where}.{f}")
        check_positive(self.eval_every, f"{where}.eval_every", allow_zero=True)
        check_type(self.eval_tasks, list, f"{where}.eval_tasks", "a list of task names (see 'ablate eval --help')")
        if self.eval_tasks:
            from ablate.evals.tasks import select

            try:
                select(",".join(str(t) for t in self.eval_tasks))
            except AblateError as exc:
                raise AblateError(f"{where}.eval_tasks: {str(exc).split(': ', 1)[1]}") from None
        from ablate.evals.tasks.base import EvalOptions

        build_dataclass(EvalOptions, self.eval_options, f"{where}.eval_options")  # keys and types, as ablate eval's flags


@dataclass
class DataConfig:
    manifests: list = field(default_factory=lambda: ["data/toyworld/manifest.json"])
    cache_dir: str = "cache"  # per-dataset and blend indices, shared by every recipe that uses it

    def validate(self, where: str) -> None:
        if not self.manifests:
            raise AblateError(f"{where}.manifests: at least one manifest is needed")
        for i, m in enumerate(self.manifests):
            check_type(m, str, f"{where}.manifests[{i}]", "a path to a manifest.json")


@dataclass
class MixEntry:
    """One line of a stage's mix: a domain selector and how much of it.

    Exactly one of ``share`` (of the stage budget left after absolute entries) or ``tokens``
    (absolute). ``density`` splits the entry across sub-domains of the selector; ``weights``
    splits it across datasets (by source name), else in proportion to their tokens;
    ``max_epochs`` caps repetition of the entry's data.
    """

    selector: str
    share: Optional[float] = None
    tokens: Optional[int] = None
    density: Optional[dict] = None
    weights: Optional[dict] = None
    max_epochs: Optional[float] = None


@dataclass
class Stage:
    name: str
    tokens: Optional[int]  # None: the sum of the mix's absolute budgets
    mix: list  # of MixEntry


DEFAULT_MAX_EPOCHS = 4.0  # repeating data more than ~4 times stops paying (Muennighoff et al. 2023)


@dataclass
class Recipe:
    name: str
    seed: int = 1234
    run_dir: Optional[str] = None  # default runs/<name>
    tokenizer: Optional[Any] = None  # if given, must match the manifests' tokenizer
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    parallelism: ParallelConfig = field(default_factory=ParallelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    cadence: CadenceConfig = field(default_factory=CadenceConfig)
    stages: list = field(default_factory=list)  # of Stage
    _path: str = ""  # where it was loaded from; paths in it are relative to the working directory

    @property
    def resolved_run_dir(self) -> str:
        return self.run_dir or os.path.join("runs", self.name)

    def to_dict(self) -> dict:
        """The resolved recipe: every default filled in, loadable again with ``parse_recipe``."""
        out = {}
        for f in dataclasses.fields(self):
            if f.name.startswith("_"):
                continue
            value = getattr(self, f.name)
            if f.name == "stages":
                value = [_stage_to_dict(s) for s in value]
            elif dataclasses.is_dataclass(value):
                value = dataclasses.asdict(value)
            out[f.name] = copy.deepcopy(value)
        out["run_dir"] = self.resolved_run_dir
        return out


def _stage_to_dict(stage: Stage) -> dict:
    mix = {}
    for e in stage.mix:
        entry = {k: v for k, v in dataclasses.asdict(e).items() if k != "selector" and v is not None}
        mix[e.selector] = entry
    return {"name": stage.name, "tokens": stage.tokens, "mix": mix}


def load_recipe(path: str) -> Recipe:
    raw = load_yaml_file(path, "recipe")
    recipe = parse_recipe(raw, origin=path)
    recipe._path = path
    return recipe


def parse_recipe(raw: Any, origin: str) -> Recipe:
    check_keys(raw, [f.name for f in dataclasses.fields(Recipe) if not f.name.startswith("_")], origin, required=("name", "stages"))
    raw = dict(raw)
    check_type(raw["name"], str, f"{origin}: name", "a run name")
    if not raw["name"] or "/" in raw["name"] or raw["name"].startswith("."):
        raise AblateError(f"{origin}: name: {raw['name']!r} must be a plain file name (it names the run directory)")
    model = raw.get("model") or {}
    check_type(model, dict, f"{origin}: model", "a mapping")
    if model.get("preset") is not None:  # a resolved recipe says ``preset: null`` when none was named
        preset = check_choice(model["preset"], MODEL_PRESETS, f"{origin}: model.preset")
        model = {**MODEL_PRESETS[preset], **model}
    raw["model"] = model
    recipe = build_dataclass(Recipe, raw, f"{origin}:", nested={"stages": _parse_stages})
    # fields are checked one by one above; these relate several sections
    if recipe.training.seq_length > recipe.model.max_position_embeddings:
        raise AblateError(f"{origin}: training.seq_length: {recipe.training.seq_length} is longer than the model's "
                          f"max_position_embeddings {recipe.model.max_position_embeddings}")
    if recipe.parallelism.ep > 1 and recipe.model.num_experts % recipe.parallelism.ep:
        raise AblateError(f"{origin}: parallelism.ep: {recipe.parallelism.ep} does not divide model.num_experts {recipe.model.num_experts}")
    if recipe.model.num_attention_heads % recipe.parallelism.tp:
        raise AblateError(f"{origin}: parallelism.tp: {recipe.parallelism.tp} does not divide model.num_attention_heads {recipe.model.num_attention_heads}")
    return recipe


def _parse_stages(raw: Any, where: str) -> list[Stage]:
    check_type(raw, list, where, "a list of stages")
    if not raw:
        raise AblateError(f"{where}: at least one stage is needed")
    stages, names = [], set()
    for i, s in enumerate(raw):
        at = f"{where}[{i}]"
        check_keys(s, ("name", "tokens", "mix"), at, required=("mix",))
        name = s.get("name", f"stage{i}")
        check_type(name, str, f"{at}.name", "a stage name")
        if name in names:
            raise AblateError(f"{at}.name: {name!r} is used by another stage")
        names.add(name)
        tokens = parse_tokens(s["tokens"], f"{at}.tokens") if s.get("tokens") is not None else None
        stages.append(Stage(name, tokens, _parse_mix(s["mix"], f"{at}.mix")))
    return stages


def _parse_mix(raw: Any, where: str) -> list[MixEntry]:
    check_type(raw, dict, where, "a mapping from domain to share, token budget or {share|tokens, density, weights, max_epochs}")
    if not raw:
        raise AblateError(f"{where}: the mix is empty")
    entries = []
    for selector, spec in raw.items():
        at = f"{where}.{selector}"
        if not isinstance(spec, dict):
            spec = {"share": spec} if isinstance(spec, (int, float)) and not isinstance(spec, bool) and spec <= 1 else {"tokens": spec}
        check_keys(spec, ("share", "tokens", "density", "weights", "max_epochs"), at)
        if ("share" in spec) == ("tokens" in spec):
            raise AblateError(f"{at}: give exactly one of 'share' (a fraction) or 'tokens' (like 150B)")
        share = tokens = None
        if "share" in spec:
            share = check_type(spec["share"], (int, float), f"{at}.share", "a fraction between 0 and 1")
            if not 0 < share <= 1:
                raise AblateError(f"{at}.share: {share!r} must be in (0, 1]")
        else:
            tokens = parse_tokens(spec["tokens"], f"{at}.tokens")
        density = spec.get("density")
        if density is not None:
            check_type(density, dict, f"{at}.density", "a mapping from sub-domain to fraction")
            for k, v in density.items():
                check_type(v, (int, float), f"{at}.density.{k}", "a fraction")
                if v < 0:
                    raise AblateError(f"{at}.density.{k}: {v!r} must be >= 0")
            if abs(sum(density.values()) - 1) > 1e-6:
                raise AblateError(f"{at}.density: fractions sum to {sum(density.values()):g}, not 1")
        weights = spec.get("weights")
        if weights is not None:
            check_type(weights, dict, f"{at}.weights", "a mapping from source name to weight")
            for k, v in weights.items():
                check_type(v, (int, float), f"{at}.weights.{k}", "a weight")
                check_positive(v, f"{at}.weights.{k}", allow_zero=True)
        max_epochs = spec.get("max_epochs")
        if max_epochs is not None:
            check_type(max_epochs, (int, float), f"{at}.max_epochs", "a number of epochs")
            check_positive(max_epochs, f"{at}.max_epochs")
        entries.append(MixEntry(selector, float(share) if share is not None else None, tokens, density,
                                weights, float(max_epochs) if max_epochs is not None else None))
    return entries

