"""The recipe: one YAML file that says everything a run may differ in.

Validated once at load (every error: ``file: field.path: what is wrong (allowed: ...)``) and
dumped resolved, with every default filled in, into the run directory. The dataclasses below
are the schema: each field's annotation (``Literal[...]`` for choices), its ``checked(...)``
range or converter, and a ``validate`` hook for checks across fields are all that
``ablate.validate.build_dataclass`` needs, so compile, train and sweep expansion refuse the same
things (non-finite numbers, out-of-range sizes, unknown keys) in the same words. The model
presets a recipe can name are in ``ablate.recipe.presets``. (About 460 lines: every section's
dataclass in one place, as torchtitan's job_config.py, so the whole schema reads as one page.)
Sections:

``name, seed, data_seed, run_dir, tokenizer``; ``data`` (manifests, index cache); ``model`` (a
preset and/or megatron-core fields); ``parallelism`` (tp, pp, ep, cp; dp is what the world size
leaves); ``training`` (sequence length, batches, optimizer, LR schedule, precision, backend);
``cadence`` (logging, eval, checkpoints, routing flushes); ``stages`` (token budget + mix), see
``Stage``.

Two seeds: ``seed`` draws the model's initialisation; ``data_seed`` the data order (the
per-dataset permutations and so the index cache keys). Unset, ``data_seed`` follows ``seed``, as
it did before the field existed; ``to_dict`` then leaves it out, so an old recipe dumps (and
plans, and keys its cache) byte for byte as before, and a sweep's ``seeds:`` axis over such a
base still varies both. The effective value is ``Recipe.resolved_data_seed`` (plan.json's
``seed``).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

from ablate.errors import AblateError, show
from ablate.recipe.budget import parse_tokens
from ablate.recipe.presets import MODEL_PRESETS
from ablate.validate import (
    COUNT_MAX,
    INT64_MAX,
    build_dataclass,
    check_choice,
    check_keys,
    check_names,
    check_number,
    check_type,
    checked,
    field_where,
    load_yaml_file,
    yaml_fields,
)


# Bounds shared by many fields: sizes and counts are positive and far inside int64; a seed is
# whatever torch.manual_seed and the index permutations accept.
SIZE = dict(ge=1, lt=COUNT_MAX)
COUNT0 = dict(ge=0, lt=COUNT_MAX)


def _on_off(value: Any, where: str) -> str:
    """YAML 1.1 reads a bare ``on``/``off`` as true/false: take them back as the words."""
    if isinstance(value, bool):
        value = "on" if value else "off"
    return check_choice(value, ("auto", "on", "off"), where)


@dataclass
class ModelConfig:
    preset: Optional[str] = None
    num_layers: int = checked(4, **SIZE)
    hidden_size: int = checked(128, **SIZE)
    num_attention_heads: int = checked(4, **SIZE)
    ffn_hidden_size: int = checked(256, **SIZE)
    moe_ffn_hidden_size: Optional[int] = checked(None, **SIZE)  # per expert; default: ffn_hidden
    num_experts: int = checked(8, **COUNT0)  # 0: a dense model
    moe_router_topk: int = checked(2, **SIZE)
    moe_layer_freq: int = checked(1, **SIZE)  # every n-th layer is MoE (1: all), the others dense
    moe_router_score_function: Literal["softmax", "sigmoid"] = "softmax"
    moe_router_load_balancing_type: Literal["aux_loss", "seq_aux_loss", "none"] = "aux_loss"
    moe_aux_loss_coeff: float = checked(0.01, ge=0)
    moe_z_loss_coeff: Optional[float] = checked(None, ge=0)
    moe_router_enable_expert_bias: bool = False
    moe_shared_expert_intermediate_size: Optional[int] = checked(None, **SIZE)
    max_position_embeddings: int = checked(512, **SIZE)
    position_embedding_type: Literal["rope", "learned_absolute"] = "rope"
    normalization: Literal["RMSNorm", "LayerNorm"] = "RMSNorm"
    make_vocab_size_divisible_by: int = checked(128, **SIZE)
    init_method_std: float = checked(0.02, gt=0)
    # auto: alltoall on CUDA, allgather on CPU
    moe_token_dispatcher_type: Literal["auto", "allgather", "alltoall"] = "auto"
    moe_grouped_gemm: bool = False  # one grouped GEMM for all local experts (CUDA)

    def validate(self, where: str) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise AblateError(
                f"{field_where(where, 'hidden_size')}: {self.hidden_size} is not divisible by "
                f"num_attention_heads {self.num_attention_heads}"
            )
        if self.num_experts and not self.moe_router_topk <= self.num_experts:
            raise AblateError(
                f"{field_where(where, 'moe_router_topk')}: {self.moe_router_topk} must be "
                "between 1 "
                f"and num_experts ({self.num_experts})"
            )
        if self.moe_router_enable_expert_bias and self.moe_router_score_function != "sigmoid":
            raise AblateError(
                f"{field_where(where, 'moe_router_enable_expert_bias')}: expert bias needs "
                "moe_router_score_function: sigmoid"
            )


@dataclass
class ParallelConfig:
    tp: int = checked(1, **SIZE)
    pp: int = checked(1, **SIZE)
    ep: int = checked(1, **SIZE)
    cp: int = checked(1, **SIZE)
    # virtual pipeline stages (model chunks) per pipeline rank: interleaved 1F1B
    vp: int = checked(1, **SIZE)
    # shard optimizer state and fp32 main params over data-parallel ranks
    distributed_optimizer: bool = False
    overlap_grad_reduce: bool = False  # start each bucket's reduction during backward (CUDA)
    # distributed optimizer: gather params during the next forward (CUDA)
    overlap_param_gather: bool = False

    def validate(self, where: str) -> None:
        if self.vp > 1 and self.pp == 1:
            raise AblateError(
                f"{field_where(where, 'vp')}: {self.vp} virtual pipeline stages need pp > 1 "
                "(pp is 1)"
            )
        if self.overlap_param_gather and not self.distributed_optimizer:
            raise AblateError(
                f"{field_where(where, 'overlap_param_gather')}: needs distributed_optimizer: true"
            )


@dataclass
class OptimizerConfig:
    name: Literal["adamw"] = "adamw"
    lr: float = checked(3e-3, gt=0)
    min_lr: float = checked(3e-4, ge=0)
    weight_decay: float = checked(0.1, ge=0)
    beta1: float = checked(0.9, ge=0, lt=1)
    beta2: float = checked(0.95, ge=0, lt=1)
    eps: float = checked(1e-8, gt=0)
    clip_grad: float = checked(1.0, ge=0)  # 0: no clipping

    def validate(self, where: str) -> None:
        if self.min_lr > self.lr:
            raise AblateError(
                f"{field_where(where, 'min_lr')}: {self.min_lr} is larger than lr {self.lr}"
            )


@dataclass
class ScheduleConfig:
    warmup_steps: int = checked(20, **COUNT0)
    # over the whole run (or per stage under 'rewarm')
    decay: Literal["cosine", "linear", "constant"] = "cosine"
    # continue: one schedule over all stages; rewarm: warm up and decay again in every stage;
    # constant_then_decay: constant LR until the last stage, which decays (WSD-style)
    stage_policy: Literal["continue", "rewarm", "constant_then_decay"] = "continue"


@dataclass
class TrainingConfig:
    seq_length: int = checked(256, **SIZE)
    global_batch_size: int = checked(32, **SIZE)
    micro_batch_size: int = checked(8, **SIZE)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    # bf16/fp16: params and compute in half, fp32 main params in the optimizer
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    backend: Literal["auto", "cpu", "cuda"] = "auto"  # auto: cuda when torch sees a GPU, else cpu
    # activation recomputation: none | selective (attention core) | full (every layer)
    recompute: Literal["none", "selective", "full"] = "none"
    # start from these model weights (a checkpoint directory, any layout) instead of a random
    # init; the optimizer starts fresh. Every run of an ablation can share one initialisation.
    init_from: Optional[str] = None

    def validate(self, where: str) -> None:
        if self.global_batch_size % self.micro_batch_size:
            raise AblateError(
                f"{field_where(where, 'global_batch_size')}: {self.global_batch_size} is not a "
                f"multiple of micro_batch_size {self.micro_batch_size}"
            )


@dataclass
class CadenceConfig:
    log_every: int = checked(10, **SIZE)
    # with eval_tasks: every N steps and at the end (0: only at the end)
    eval_every: int = checked(0, **COUNT0)
    # ablate eval tasks scored inside training (none: run it after)
    eval_tasks: list = field(default_factory=list)
    # e.g. {limit: 50, bpb_tokens: 16384}: as ablate eval's flags
    eval_options: dict = field(default_factory=dict)
    checkpoint_every: int = checked(200, **SIZE)
    keep_checkpoints: int = checked(2, **SIZE)
    routing_flush_every: int = checked(50, **SIZE)
    tensorboard: bool = True
    # write checkpoints in the background (megatron's async dist_checkpointing save); auto: on CUDA
    async_checkpoint: str = checked("auto", convert=_on_off)
    # Weights & Biases (the optional extra 'wandb'): {project: P, mode: online|offline|disabled,
    # entity: E, group: G, tags: [...]}; empty: no W&B. A resumed run continues its W&B run.
    wandb: dict = field(default_factory=dict)

    def validate(self, where: str) -> None:
        if self.wandb:
            at = field_where(where, "wandb")
            keys = ["project", "mode", "entity", "group", "tags"]
            check_keys(self.wandb, keys, at, required=("project",))
            check_type(self.wandb["project"], str, f"{at}.project", "a W&B project name")
            if "mode" in self.wandb:
                check_choice(self.wandb["mode"], ("online", "offline", "disabled"), f"{at}.mode")
        at = field_where(where, "eval_tasks")
        check_type(self.eval_tasks, list, at, "a list of task names (see 'ablate eval --help')")
        for i, t in enumerate(self.eval_tasks):
            check_type(t, str, f"{at}[{i}]", "a task name (see 'ablate eval --help')")
            if len(t) > 100:
                raise AblateError(
                    f"{at}[{i}]: {show(t)} is not a task name (see 'ablate eval --help')"
                )
        if self.eval_tasks:
            from ablate.evals.tasks import select

            try:
                select(",".join(self.eval_tasks))
            except AblateError as exc:
                raise AblateError(f"{at}: {str(exc).split(': ', 1)[-1]}") from None
        from ablate.evals.tasks.base import EvalOptions

        # keys and types, as ablate eval's flags
        build_dataclass(EvalOptions, self.eval_options, field_where(where, "eval_options"))


@dataclass
class DataConfig:
    manifests: list[str] = field(default_factory=lambda: ["data/toyworld/manifest.json"])
    cache_dir: str = "cache"  # per-dataset and blend indices, shared by every recipe that uses it

    def validate(self, where: str) -> None:
        if not self.manifests:
            raise AblateError(f"{field_where(where, 'manifests')}: at least one manifest is needed")


def _fractions(value: Any, where: str) -> dict:
    """``density``: sub-domain -> a fraction in [0, 1]; they sum to 1."""
    check_names(value, where, "a mapping from sub-domain to fraction")
    for k, v in value.items():
        check_number(v, f"{where}.{k}", ge=0, le=1)
    if abs(sum(value.values()) - 1) > 1e-6:
        raise AblateError(f"{where}: fractions sum to {sum(value.values()):g}, not 1")
    return dict(value)


def _weights(value: Any, where: str) -> dict:
    """``weights``: source name (or dataset prefix) -> a finite weight >= 0."""
    check_names(value, where, "a mapping from source name to weight")
    for k, v in value.items():
        check_number(v, f"{where}.{k}", ge=0, lt=1e300)
    return dict(value)


@dataclass
class MixEntry:
    """One line of a stage's mix: a domain selector and how much of it.

    Exactly one of ``share`` (of the stage budget left after absolute entries) or ``tokens``
    (absolute). ``density`` splits the entry across sub-domains of the selector; ``weights``
    splits it across datasets (by source name), else in proportion to their tokens;
    ``max_epochs`` caps repetition of the entry's data (1: no repetition).
    """

    selector: str = checked(internal=True)  # the mix's key
    share: Optional[float] = checked(None, gt=0, le=1)
    tokens: Optional[int] = checked(None, convert=parse_tokens)
    density: Optional[dict] = checked(None, convert=_fractions)
    weights: Optional[dict] = checked(None, convert=_weights)
    max_epochs: Optional[float] = checked(None, ge=1, lt=1e300)

    def validate(self, where: str) -> None:
        if (self.share is None) == (self.tokens is None):
            raise AblateError(
                f"{where}: give exactly one of 'share' (a fraction) or 'tokens' (like 150B)"
            )


MIX_FORMS = (
    "a share (a fraction in (0, 1]), a token count (a whole number like 12000, or 150M) "
    "or {share|tokens, density, weights, max_epochs}"
)


def _parse_mix(raw: Any, where: str) -> list[MixEntry]:
    """A stage's ``mix``: domain selector -> MixEntry. A bare value is a share when it is a number
    in (0, 1], else a token count; a bare number above 1 must be whole (``1.5`` is refused: half
    a token, or a share over 100 %?)."""
    check_names(raw, where, f"a mapping from domain to {MIX_FORMS}")
    if not raw:
        raise AblateError(f"{where}: the mix is empty")
    entries = []
    for selector, spec in raw.items():
        at = f"{where}.{selector}"
        if isinstance(spec, (int, float)) and not isinstance(spec, bool):
            if isinstance(spec, float) and not math.isfinite(spec):
                raise AblateError(
                    f"{at}: {show(spec)} is not a finite number (allowed: {MIX_FORMS})"
                )
            if spec <= 1:
                spec = {"share": spec}
            elif float(spec).is_integer():
                spec = {"tokens": int(spec)}
            else:
                raise AblateError(
                    f"{at}: {show(spec)} is neither a share (a fraction in (0, 1]) nor a token "
                    "count (a whole number like 12000, or 1.5M)"
                )
        elif not isinstance(spec, dict):
            spec = {"tokens": spec}
        entries.append(build_dataclass(MixEntry, spec, at, fixed={"selector": selector}))
    return entries


@dataclass
class Stage:
    """One stage: a token budget and its mix. ``tokens`` None: the sum of the mix's absolute
    budgets (shares need it)."""

    mix: list = checked(convert=_parse_mix)  # of MixEntry
    name: str = ""  # default: stage<i>
    tokens: Optional[int] = checked(None, convert=parse_tokens)


DEFAULT_MAX_EPOCHS = 4.0  # repeating data more than ~4 times stops paying (Muennighoff et al. 2023)


def _run_name(value: Any, where: str) -> str:
    check_type(value, str, where, "a run name")
    if not value or "/" in value or value.startswith(".") or len(value) > 200:
        raise AblateError(
            f"{where}: {show(value)} must be a plain file name (it names the run directory)"
        )
    return value


@dataclass
class Recipe:
    name: str = checked(convert=_run_name)
    seed: int = checked(1234, ge=0, le=INT64_MAX)  # the initialisation (and dropout)
    # the data order; None: follows ``seed`` (see the module doc)
    data_seed: Optional[int] = checked(None, ge=0, le=INT64_MAX)
    run_dir: Optional[str] = None  # default runs/<name>
    tokenizer: Optional[Any] = None  # if given, must match the manifests' tokenizer
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    parallelism: ParallelConfig = field(default_factory=ParallelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    cadence: CadenceConfig = field(default_factory=CadenceConfig)
    stages: list = field(default_factory=list)  # of Stage
    # the file it was loaded from, for messages ("" when built from a mapping); paths inside a
    # recipe are relative to the working directory, not to this file
    source: str = checked("", internal=True)

    @property
    def _path(self) -> str:
        """The old name of ``source``, read-only, for callers not yet switched."""
        return self.source

    @property
    def resolved_run_dir(self) -> str:
        return self.run_dir or os.path.join("runs", self.name)

    @property
    def resolved_data_seed(self) -> int:
        """The seed of the data order: ``data_seed``, else ``seed``."""
        return self.seed if self.data_seed is None else self.data_seed

    def to_dict(self) -> dict:
        """The resolved recipe: every default filled in, loadable again with ``parse_recipe``."""
        out = {}
        for f in yaml_fields(Recipe):
            value = getattr(self, f.name)
            if f.name == "stages":
                value = [_stage_to_dict(s) for s in value]
            elif dataclasses.is_dataclass(value):
                value = dataclasses.asdict(value)
            if f.name == "data_seed" and value is None:
                continue  # unset: the dump of a recipe without it stays as it was (module doc)
            out[f.name] = copy.deepcopy(value)
        out["run_dir"] = self.resolved_run_dir
        return out


def _stage_to_dict(stage: Stage) -> dict:
    mix = {}
    for e in stage.mix:
        entry = {
            k: v for k, v in dataclasses.asdict(e).items() if k != "selector" and v is not None
        }
        mix[e.selector] = entry
    return {"name": stage.name, "tokens": stage.tokens, "mix": mix}


def load_recipe(path: str) -> Recipe:
    raw = load_yaml_file(path, "recipe")
    return parse_recipe(raw, origin=path)


def parse_recipe(raw: Any, origin: str) -> Recipe:
    """A recipe from its YAML mapping; ``origin`` (a file name, or ``sweep.yaml: point p``)
    starts every message: ``<origin>: <field.path>: what is wrong (allowed: ...)``."""
    top = origin + ":"  # field_where: "<origin>: field"
    check_keys(raw, [f.name for f in yaml_fields(Recipe)], origin, required=("name", "stages"))
    raw = dict(raw)
    model = raw.get("model") or {}
    check_type(model, dict, field_where(top, "model"), "a mapping")
    # a resolved recipe says ``preset: null`` when none was named
    if model.get("preset") is not None:
        preset = check_choice(model["preset"], MODEL_PRESETS, field_where(top, "model.preset"))
        model = {**MODEL_PRESETS[preset], **model}
    raw["model"] = model
    recipe = build_dataclass(
        Recipe, raw, top, nested={"stages": _parse_stages}, fixed={"source": origin}
    )
    # fields are checked one by one above; these relate several sections
    if recipe.training.seq_length > recipe.model.max_position_embeddings:
        raise AblateError(
            f"{origin}: training.seq_length: {recipe.training.seq_length} is longer than the "
            f"model's max_position_embeddings {recipe.model.max_position_embeddings}"
        )
    if recipe.parallelism.ep > 1 and recipe.model.num_experts % recipe.parallelism.ep:
        raise AblateError(
            f"{origin}: parallelism.ep: {recipe.parallelism.ep} does not divide "
            f"model.num_experts {recipe.model.num_experts}"
        )
    if recipe.model.num_attention_heads % recipe.parallelism.tp:
        raise AblateError(
            f"{origin}: parallelism.tp: {recipe.parallelism.tp} does not divide "
            f"model.num_attention_heads {recipe.model.num_attention_heads}"
        )
    return recipe


def _parse_stages(raw: Any, where: str) -> list[Stage]:
    check_type(raw, list, where, "a list of stages")
    if not raw:
        raise AblateError(f"{where}: at least one stage is needed")
    stages, names = [], set()
    for i, s in enumerate(raw):
        at = f"{where}[{i}]"
        if isinstance(s, dict) and "name" not in s:
            s = {**s, "name": f"stage{i}"}
        stage = build_dataclass(Stage, s, at)
        if stage.name in names:
            raise AblateError(f"{at}.name: {show(stage.name)} is used by another stage")
        names.add(stage.name)
        stages.append(stage)
    return stages
