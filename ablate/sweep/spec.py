"""The sweep file: a base recipe, the axes that vary it, and how its points run.

```yaml
name: density                       # names the sweep; its run dirs go to runs/<name>/<point>
base: recipes/toy/density-structured-025.yaml   # a recipe file, or an inline recipe mapping
root: runs/density                  # optional (default runs/<name>)
set: {training.optimizer.lr: 0.002} # optional: applied to every point first
grid:                               # cartesian product, one axis per path
  stages.0.mix.general.tokens: [1M, 2M]
zip:                                # one axis: equal-length lists taken together (or a list)
  stages.mixed.mix.math.density.math.structured: [0, 0.25, 0.5, 1.0]
  stages.mixed.mix.math.density.math.text: [1, 0.75, 0.5, 0]
variants:                           # one axis of named points
  - {name: small, set: {model.num_layers: 2}}
  - {name: large, set: {model.num_layers: 4}}
swarm: {n: 20, concentration: 10, seed: 0}   # one axis of N mixtures of one stage's mix,
                                    # drawn around a prior (ablate.sweep.swarm has every field)
seeds: [1, 2]                       # an axis over the recipe's `seed` (init; data order too,
                                    # unless the recipe or data_seeds sets data_seed)
data_seeds: [7, 8]                  # an axis over the recipe's `data_seed` (the data order)
point_name: "{sweep}-d{math.structured}-s{seed}"   # optional naming template
executor: local                     # default for `ablate sweep submit` (local | slurm)
local: {nproc_per_node: 1}
slurm: {nodes: 4, gpus_per_node: 8, partition: gpu, account: proj, time: "04:00:00",
        signal_seconds: 300, extra: ["--qos=high"], setup: ["source venv/bin/activate"]}
eval: {tasks: [bpb, probes]}        # optional: queue `ablate eval RUN_DIR` after each training
```

A relative ``base:`` path is relative to the sweep file's directory, so ``ablate sweep expand``
works from anywhere (a base found only relative to the working directory is still read, as
before this rule, until the sweep files that rely on it say ``../toy/...``). Paths inside the
base recipe (manifests, cache) and ``root`` stay relative to the working directory, as in every
recipe; the expanded points hold them absolute. Field paths are dotted: list items by index or
by ``name`` (``stages.0`` or ``stages.mixed``), mapping keys by the longest key that exists
(domain names contain dots: ``density.math.structured``).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Optional

from ablate.errors import AblateError, show
from ablate.sweep.swarm import SwarmSpec, parse_swarm
from ablate.validate import (
    INT64_MAX,
    build_dataclass,
    check_choice,
    check_keys,
    check_names,
    check_number,
    check_type,
    checked,
    load_yaml_file,
)

EXECUTORS = ("local", "slurm")


@dataclass
class SlurmConfig:
    nodes: int = checked(1, ge=1, lt=2**31)
    gpus_per_node: int = checked(0, ge=0, lt=2**31)
    # processes per node; default: gpus_per_node (1 without GPUs)
    nproc_per_node: Optional[int] = checked(None, ge=1, lt=2**31)
    # the one task per node runs torchrun and all its workers
    cpus_per_task: Optional[int] = checked(None, ge=1, lt=2**31)
    mem: Optional[str] = None
    partition: Optional[str] = None
    account: Optional[str] = None
    time: Optional[str] = None
    # USR1 this long before the time limit: checkpoint, requeue
    signal_seconds: int = checked(120, ge=1, lt=2**31)
    # rendezvous port on the first node; default: from the job id
    port: Optional[int] = checked(None, ge=1, le=65535)
    python: Optional[str] = None  # default: the interpreter running `ablate sweep submit`
    # shell lines run before training (module load, ...)
    setup: list[str] = field(default_factory=list)
    env: dict = field(default_factory=dict)  # exported in the job
    extra: list[str] = field(default_factory=list)  # more #SBATCH options, e.g. "--qos=high"

    def validate(self, where: str) -> None:
        for i, line in enumerate(self.extra):
            if not sbatch_option(line).startswith("-"):
                raise AblateError(
                    f"{where}.extra[{i}]: {show(line)} is not an sbatch option (like --qos=high)"
                )
        check_names(self.env, f"{where}.env", "a mapping from variable name to value")
        for k, v in self.env.items():
            check_type(v, (str, int, float), f"{where}.env.{k}", "a string or number")

    @property
    def procs_per_node(self) -> int:
        return self.nproc_per_node or self.gpus_per_node or 1


@dataclass
class LocalConfig:
    nproc_per_node: int = checked(1, ge=1, lt=2**16)


@dataclass
class EvalConfig:
    tasks: list[str] = field(default_factory=list)
    step: Any = None  # passed to `ablate eval --step`: N, "N,M", "all"
    args: list = field(default_factory=list)  # more arguments for `ablate eval`
    slurm: dict = field(default_factory=dict)  # overrides of the training job's slurm settings

    def validate(self, where: str) -> None:
        if not self.tasks:
            raise AblateError(f"{where}.tasks: name at least one eval task (e.g. [bpb, probes])")
        if self.step is not None:
            check_type(self.step, (int, str), f"{where}.step", "a step: N, 'N,M' or 'all'")
        for i, a in enumerate(self.args):
            check_type(a, (str, int, float), f"{where}.args[{i}]", "a command-line argument")
        allowed = [f.name for f in dataclasses.fields(SlurmConfig)]
        check_keys(self.slurm, allowed, f"{where}.slurm")


@dataclass
class Variant:
    name: str
    set: dict


@dataclass
class SweepSpec:
    name: str
    base: Any  # a recipe path, or an inline recipe mapping
    root: Optional[str] = None
    set: dict = field(default_factory=dict)
    grid: dict = field(default_factory=dict)
    zip: list = field(default_factory=list)  # of dicts
    variants: list = field(default_factory=list)  # of Variant
    swarm: Optional[SwarmSpec] = None
    seeds: Optional[list] = None
    data_seeds: Optional[list] = None
    point_name: Optional[str] = None
    executor: str = "local"
    local: LocalConfig = field(default_factory=LocalConfig)
    slurm: SlurmConfig = field(default_factory=SlurmConfig)
    eval: Optional[EvalConfig] = None
    _path: str = ""

    @property
    def resolved_root(self) -> str:
        return os.path.abspath(self.root or os.path.join("runs", self.name))

    def slurm_for_eval(self) -> SlurmConfig:
        """The eval job's settings: one node, one process, the training job's settings otherwise."""
        base = dataclasses.asdict(self.slurm)
        base.update(nodes=1, nproc_per_node=1, gpus_per_node=min(self.slurm.gpus_per_node, 1))
        base.update(self.eval.slurm if self.eval else {})
        cfg = build_dataclass(SlurmConfig, base, f"{self._path}: eval.slurm")
        return cfg


def sbatch_option(line: str) -> str:
    """An ``extra`` line as an sbatch option: ``#SBATCH --qos=high`` and ``--qos=high`` alike."""
    line = line.strip()
    return line[len("#SBATCH") :].strip() if line.startswith("#SBATCH") else line


def load_sweep(path: str) -> SweepSpec:
    raw = load_yaml_file(path, "sweep file")
    spec = parse_sweep(raw, path, base_dir=os.path.dirname(path))
    spec._path = path
    return spec


def _base_path(base: str, base_dir: str | None, origin: str) -> str:
    """A relative base is relative to the sweep file's directory; the working directory (the
    rule before) is the fallback, so sweep files written for it keep working."""
    if not base or "\0" in base:
        raise AblateError(f"{origin}: base: {show(base)} is not a recipe file path")
    candidates = (
        [base] if os.path.isabs(base) or base_dir is None else [os.path.join(base_dir, base), base]
    )
    for path in candidates:
        if os.path.isfile(path):
            return os.path.normpath(path)
    if any(os.path.isdir(p) for p in candidates):
        raise AblateError(f"{origin}: base: {show(base)} is a directory, not a recipe file")
    raise AblateError(
        f"{origin}: base: no such recipe file {show(base)} (a relative path is relative to "
        "the sweep file's directory)"
    )


def parse_sweep(raw: Any, origin: str, base_dir: str | None = None) -> SweepSpec:
    """Validate a sweep mapping; ``base_dir`` (the sweep file's directory) anchors a relative
    ``base``, else it is relative to the working directory."""
    fields = [f.name for f in dataclasses.fields(SweepSpec) if not f.name.startswith("_")]
    check_keys(raw, fields, origin, required=("name", "base"))
    name = check_type(raw["name"], str, f"{origin}: name", "a sweep name")
    if not name or "/" in name or name.startswith(".") or len(name) > 200:
        raise AblateError(
            f"{origin}: name: {show(name)} must be a plain file name (it names the sweep's "
            "directory)"
        )
    base = raw["base"]
    if not isinstance(base, (str, dict)):
        raise AblateError(
            f"{origin}: base: expected a recipe file path or an inline recipe mapping, "
            f"got {show(base)}"
        )
    if isinstance(base, str):
        base = _base_path(base, base_dir, origin)
    root = raw.get("root")
    if root is not None:
        check_type(root, str, f"{origin}: root", "a directory")
    set_ = _assignments(raw.get("set") or {}, f"{origin}: set")
    grid = _axes(raw.get("grid") or {}, f"{origin}: grid")
    zips = raw.get("zip") or []
    zips = [zips] if isinstance(zips, dict) else zips
    check_type(
        zips,
        list,
        f"{origin}: zip",
        "a mapping from field path to a list of values (or a list of such)",
    )
    zip_axes = []
    for i, z in enumerate(zips):
        at = f"{origin}: zip" + (f"[{i}]" if len(zips) > 1 else "")
        axes = _axes(z, at)
        if not axes:
            raise AblateError(f"{at}: empty zip (give at least one field path with its values)")
        lengths = {p: len(v) for p, v in axes.items()}
        if len(set(lengths.values())) > 1:
            raise AblateError(
                f"{at}: zipped lists differ in length "
                f"({', '.join(f'{p}: {n}' for p, n in lengths.items())}); "
                "they must be equally long"
            )
        zip_axes.append(axes)
    variants = _variants(raw.get("variants"), f"{origin}: variants")
    swarm = raw.get("swarm")
    swarm = parse_swarm(swarm, f"{origin}: swarm") if swarm is not None else None
    seeds = _seed_axis(raw.get("seeds"), f"{origin}: seeds")
    data_seeds = _seed_axis(raw.get("data_seeds"), f"{origin}: data_seeds")
    point_name = raw.get("point_name")
    if point_name is not None:
        check_type(
            point_name, str, f"{origin}: point_name", "a naming template like '{sweep}-{seed}'"
        )
    executor = check_choice(raw.get("executor", "local"), EXECUTORS, f"{origin}: executor")
    local = build_dataclass(LocalConfig, raw.get("local"), f"{origin}: local")
    slurm = build_dataclass(SlurmConfig, raw.get("slurm"), f"{origin}: slurm")
    ev = raw.get("eval")
    ev = build_dataclass(EvalConfig, ev, f"{origin}: eval") if ev is not None else None
    return SweepSpec(
        name=name,
        base=base,
        root=root,
        set=set_,
        grid=grid,
        zip=zip_axes,
        variants=variants,
        swarm=swarm,
        seeds=seeds,
        data_seeds=data_seeds,
        point_name=point_name,
        executor=executor,
        local=local,
        slurm=slurm,
        eval=ev,
    )


def _seed_axis(seeds: Any, where: str) -> Optional[list]:
    """``seeds`` / ``data_seeds``: a non-empty list of distinct integer seeds, or None."""
    if seeds is None:
        return None
    check_type(seeds, list, where, "a list of integer seeds")
    if not seeds:
        raise AblateError(f"{where}: empty axis (give at least one seed)")
    for i, s in enumerate(seeds):
        check_number(s, f"{where}[{i}]", integer=True, ge=0, le=INT64_MAX)
    if len(set(seeds)) != len(seeds):
        raise AblateError(f"{where}: {show(seeds)} repeats a seed")
    return seeds


def _assignments(raw: Any, where: str) -> dict:
    check_names(raw, where, "a mapping from field path (like training.optimizer.lr) to a value")
    return dict(raw)


def _axes(raw: Any, where: str) -> dict:
    check_names(raw, where, "a mapping from field path to a list of values")
    for path, values in raw.items():
        check_type(values, list, f"{where}.{path}", "a list of values")
        if not values:
            raise AblateError(f"{where}.{path}: empty axis (give at least one value)")
    return dict(raw)


def _variants(raw: Any, where: str) -> list[Variant]:
    if raw is None:
        return []
    check_type(raw, list, where, "a list of {name, set}")
    if not raw:
        raise AblateError(f"{where}: empty axis (give at least one variant)")
    out, names = [], set()
    for i, v in enumerate(raw):
        at = f"{where}[{i}]"
        check_keys(v, ("name", "set"), at, required=("name",))
        name = check_type(v["name"], str, f"{at}.name", "a variant name")
        if name in names:
            raise AblateError(f"{at}.name: {show(name)} is used by another variant")
        names.add(name)
        out.append(Variant(name, _assignments(v.get("set") or {}, f"{at}.set")))
    return out
