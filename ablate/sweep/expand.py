"""Sweep spec -> points: one resolved recipe per point, each in its own run directory.

Every point is built and validated (recipe schema and budget arithmetic) before anything is
written, so an invalid point fails the whole expansion with its name and the field. Then each
point's ``recipe.yaml`` is written atomically into ``<root>/<point>/`` and the list of points
into ``<root>/sweep.json``. Paths inside the point recipes are absolute, so a job may start
anywhere. A point whose run has started is never rewritten with a different recipe.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import itertools
import json
import os
import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from ablate.errors import AblateError
from ablate.errors import show as show_value
from ablate.io import write_json_atomic, write_text_atomic
from ablate.run_layout import RunLayout
from ablate.sweep.paths import assign, dotted, resolve
from ablate.sweep.spec import SweepSpec
from ablate.validate import load_yaml_file

SWEEP_FORMAT = "ablate.sweep/1"
MIX_FIELDS = ("share", "tokens", "density", "weights", "max_epochs")


@dataclass
class Point:
    name: str
    index: int
    # axis label (its alias, else its path) -> value, in axis order: the table's columns
    values: dict
    run_dir: str
    recipe: Any = None  # the parsed Recipe
    text: str = ""  # recipe.yaml as written
    plan: Any = None
    swarm: Any = None  # the sweep's Swarm (shared by its points), if it has a swarm axis

    @property
    def recipe_path(self) -> str:
        return RunLayout(self.run_dir).recipe


@dataclass
class _Choice:
    labels: dict  # label -> value
    sets: list  # (path, value, where)
    index: int = 0


@dataclass
class _Axis:
    kind: str
    choices: list = field(default_factory=list)


def build_points(spec: SweepSpec) -> list[Point]:
    """Every point of the sweep, parsed and validated; nothing is written."""
    from ablate.recipe.schema import parse_recipe

    where = spec._path or spec.name
    tree, optional = _base_tree(spec, where)
    for path, value in spec.set.items():
        assign(tree, resolve(tree, path, f"{where}: set.{path}", optional), value)
    swarm = _swarm(spec, tree, where)
    # the swarm owns its stage's budget and mix: another axis there would change its caps and sums
    owned = (
        [["stages", swarm.stage_index, "mix"], ["stages", swarm.stage_index, "tokens"]]
        if swarm
        else []
    )
    axes, aliases = _axes(spec, tree, where, optional, swarm)
    root = spec.resolved_root
    variables = (
        ["sweep", "index"]
        + [label for a in axes for c in a.choices[:1] for label in c.labels]
        + list(aliases)
    )
    template = spec.point_name or _default_template(axes, aliases)
    points, seen = [], {}
    for index, combo in enumerate(itertools.product(*(a.choices for a in axes))):
        values, indices = {}, {}
        for choice in combo:
            values.update(choice.labels)
            indices.update({k: choice.index for k in choice.labels})
        for label, path in aliases.items():
            values[label], indices[label] = values[path], indices[path]
        name = _name(
            template, {"sweep": spec.name, "index": index, **values}, indices, where, variables
        )
        if name in seen:
            raise AblateError(
                f"{where}: point_name: points {seen[name]} and {index} are both named "
                f"{show_value(name)} (template {show_value(template)}; add a field that differs, "
                f"from: {', '.join(variables)})"
            )
        seen[name] = index
        raw = copy.deepcopy(tree)
        touched: dict[tuple, str] = {}
        for choice in combo:
            for path, value, at in choice.sets:
                keys = resolve(raw, path, f"{where}: {at}", optional)
                if at != "swarm" and any(_nested(keys, o) for o in owned):
                    raise AblateError(
                        f"{where}: {at}: sets {dotted(keys)}, inside stage "
                        f"{show_value(swarm.stage_name)}'s budget or mix, which the swarm draws "
                        "(put a fixed change in set:, or swarm another stage)"
                    )
                if tuple(keys) in touched and touched[tuple(keys)] != at:
                    raise AblateError(
                        f"{where}: {at}: sets {dotted(keys)}, which {touched[tuple(keys)]} "
                        "also sets"
                    )
                touched[tuple(keys)] = at
                assign(raw, keys, value)
        _strip_unset_mix_fields(raw)
        run_dir = os.path.join(root, name)
        raw["name"], raw["run_dir"] = name, run_dir
        origin = f"{where}: point {name}"
        recipe = parse_recipe(raw, origin=origin)
        text = yaml.safe_dump(recipe.to_dict(), sort_keys=False)
        short = {path: alias for alias, path in aliases.items()}
        shown = {short.get(k, k): v for k, v in values.items() if k not in aliases}
        points.append(Point(name, index, shown, run_dir, recipe, text, swarm=swarm))
    return points


def _swarm(spec: SweepSpec, tree: dict, where: str):
    """The swarm axis's mixtures, drawn over the base after ``set:`` (None without one)."""
    if spec.swarm is None:
        return None
    from ablate.recipe.schema import parse_recipe
    from ablate.sweep.swarm import build_swarm

    raw = copy.deepcopy(tree)
    _strip_unset_mix_fields(raw)
    recipe = parse_recipe(raw, origin=f"{where}: base")
    swarm = build_swarm(spec.swarm, recipe, where)
    # its stage's entries in full form (a set: may have written shorthand like `general: 30K`),
    # so the swarm's paths (mix.<entry>.share, .tokens, .density) exist in every point's tree
    stage = tree["stages"][swarm.stage_index]
    stage["mix"] = {
        e.selector: {f: getattr(e, f) for f in MIX_FIELDS}
        for e in recipe.stages[swarm.stage_index].mix
    }
    stage.setdefault("tokens", None)
    return swarm


def _nested(a: list, b: list) -> bool:
    """One field path lies inside the other (or they are the same)."""
    return a[: len(b)] == b or b[: len(a)] == a


def plan_points(spec: SweepSpec, points: list[Point], verify: bool = True) -> None:
    """The budget arithmetic of every point (what compile does first); an error names the point.
    ``verify=False`` leaves the datasets' quick file check to ``verify_points``."""
    from ablate.recipe.plan import make_plan

    for p in points:
        with _naming(spec, p):
            p.plan = make_plan(p.recipe, verify=verify)


def verify_points(spec: SweepSpec, points: list[Point]) -> None:
    """The quick check of every dataset the points read, for points planned with verify=False."""
    from ablate.recipe.plan import verify_plan

    for p in points:
        with _naming(spec, p):
            verify_plan(p.plan)


@contextlib.contextmanager
def _naming(spec: SweepSpec, point: Point):
    """Re-raise a point's AblateError as ``<sweep>: point <name>: <what>``."""
    try:
        yield
    except AblateError as exc:
        prefix = f"{spec._path or spec.name}: point {point.name}: "
        msg = str(exc)
        if msg.startswith(prefix):  # the plan names the point already (the recipe's source)
            raise
        msg = msg[len(point.name) + 2 :] if msg.startswith(f"{point.name}: ") else msg
        raise AblateError(f"{prefix}{msg}") from None


def write_points(spec: SweepSpec, points: list[Point]) -> None:
    """``recipe.yaml`` per point and ``sweep.json``; refuses to change a point that has started."""
    where = spec._path or spec.name
    for p in points:
        if os.path.isfile(p.recipe_path):
            with open(p.recipe_path, encoding="utf-8") as f:
                old = f.read()
            if old != p.text and started(p.run_dir):
                raise AblateError(
                    f"{where}: point {p.name}: {p.run_dir} holds a started run of a different "
                    "recipe; give the sweep another root (or name), or remove that run directory"
                )
    for p in points:
        os.makedirs(p.run_dir, exist_ok=True)
        write_text_atomic(p.recipe_path, p.text)
    record = {
        "format": SWEEP_FORMAT,
        "name": spec.name,
        "spec": os.path.abspath(spec._path) if spec._path else None,
        "points": [
            {"name": p.name, "index": p.index, "run_dir": p.run_dir, "values": p.values}
            for p in points
        ],
    }
    if points and points[0].swarm is not None:
        record["swarm"] = points[0].swarm.record()
    write_json_atomic(os.path.join(spec.resolved_root, "sweep.json"), record)


def started(run_dir: str) -> bool:
    """Training has begun there: its status, metrics or checkpoints exist."""
    run = RunLayout(run_dir)
    return any(os.path.exists(p) for p in (run.status, run.metrics, run.checkpoints))


def points_table(points: list[Point]) -> str:
    from ablate.recipe.budget import format_tokens

    labels = list(points[0].values) if points else []
    head = ["point", *labels, "steps", "tokens"]
    rows = [head]
    for p in points:
        steps = sum(s.steps for s in p.plan.stages) if p.plan else ""
        tokens = format_tokens(sum(s.tokens for s in p.plan.stages)) if p.plan else ""
        rows.append([p.name, *(show(p.values[k]) for k in labels), str(steps), tokens])
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def show(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


# --------------------------------------------------------------------------- internals


def _base_tree(spec: SweepSpec, where: str) -> tuple[dict, dict]:
    """The base recipe resolved (every default filled in) as a mutable tree.

    Two departures from ``Recipe.to_dict``: the model section holds only the fields the base
    gives (so a ``model.preset`` axis swaps the whole preset; other model fields may still be
    set), and every mix entry lists all of its fields (unset ones as None) so they can be set.
    """
    from ablate.recipe.schema import ModelConfig, load_recipe, parse_recipe

    if isinstance(spec.base, str):
        recipe = load_recipe(spec.base)
        raw = load_yaml_file(spec.base, "recipe")
    else:
        recipe = parse_recipe(spec.base, origin=f"{where}: base")
        raw = spec.base
    tree = recipe.to_dict()
    # to_dict leaves an unset data_seed out; here it is a field a sweep may set (data_seeds)
    tree.setdefault("data_seed", None)
    tree["model"] = copy.deepcopy(raw.get("model") or {})
    for stage in tree["stages"]:
        for selector, entry in stage["mix"].items():
            stage["mix"][selector] = {f: entry.get(f) for f in MIX_FIELDS}
    data = tree["data"]
    data["manifests"] = [os.path.abspath(m) for m in data["manifests"]]
    data["cache_dir"] = os.path.abspath(data["cache_dir"])
    if isinstance(tree.get("tokenizer"), str) and os.path.exists(tree["tokenizer"]):
        tree["tokenizer"] = os.path.abspath(tree["tokenizer"])
    optional = {("model",): tuple(f.name for f in dataclasses.fields(ModelConfig))}
    return tree, optional


def _strip_unset_mix_fields(raw: dict) -> None:
    for stage in raw.get("stages") or []:
        if isinstance(stage, dict) and isinstance(stage.get("mix"), dict):
            for selector, entry in stage["mix"].items():
                if isinstance(entry, dict):
                    stage["mix"][selector] = {k: v for k, v in entry.items() if v is not None}


def _axes(
    spec: SweepSpec, tree: dict, where: str, optional: dict, swarm=None
) -> tuple[list[_Axis], dict]:
    """The axes in product order (grid paths, zips, variants, swarm, seeds, data seeds) and short
    aliases.

    An axis over a path is labelled by the path as written; its alias is the last field it
    resolves to (``math.structured``, ``lr``), usable in ``point_name`` when no other axis
    has the same one.
    """
    axes: list[_Axis] = []
    last_key: dict[str, str] = {}
    for path, values in spec.grid.items():
        keys = resolve(tree, path, f"{where}: grid.{path}", optional)
        last_key[path] = str(keys[-1])
        axes.append(
            _Axis(
                "grid",
                [_Choice({path: v}, [(path, v, f"grid.{path}")], i) for i, v in enumerate(values)],
            )
        )
    for n, z in enumerate(spec.zip):
        label = f"zip[{n}]" if len(spec.zip) > 1 else "zip"
        for path in z:
            last_key[path] = str(resolve(tree, path, f"{where}: {label}.{path}", optional)[-1])
        length = len(next(iter(z.values())))
        axes.append(
            _Axis(
                "zip",
                [
                    _Choice({p: z[p][i] for p in z}, [(p, z[p][i], f"{label}.{p}") for p in z], i)
                    for i in range(length)
                ],
            )
        )
    if spec.variants:
        axes.append(
            _Axis(
                "variants",
                [
                    _Choice(
                        {"variant": v.name},
                        [(p, val, f"variants[{i}].set.{p}") for p, val in v.set.items()],
                        i,
                    )
                    for i, v in enumerate(spec.variants)
                ],
            )
        )
    if swarm is not None:  # one choice per mixture, labelled by its index and shares
        axes.append(
            _Axis(
                "swarm",
                [
                    _Choice(swarm.labels(i), [(p, v, "swarm") for p, v in swarm.sets(i)], i)
                    for i in range(len(swarm.tokens_NK))
                ],
            )
        )
    # the init and data-order seeds: two axes, so both together give their product
    for kind, label in (("seeds", "seed"), ("data_seeds", "data_seed")):
        values = getattr(spec, kind)
        if values:
            axes.append(
                _Axis(
                    kind,
                    [_Choice({label: s}, [(label, s, kind)], i) for i, s in enumerate(values)],
                )
            )
    counts: dict[str, int] = {}
    for k in last_key.values():
        counts[k] = counts.get(k, 0) + 1
    reserved = {"sweep", "index", "variant", "mixture", "seed", "data_seed"}
    aliases = {k: p for p, k in last_key.items() if counts[k] == 1 and k not in reserved and k != p}
    return axes, aliases


def _default_template(axes: list[_Axis], aliases: dict) -> str:
    short = {p: a for a, p in aliases.items()}
    parts = ["{sweep}"]
    for axis in axes:
        first = next(iter(axis.choices[0].labels))
        if axis.kind in ("grid", "zip"):
            label = short.get(first, first)
            parts.append(f"{label}={{{label}}}")
        elif axis.kind == "variants":
            parts.append("{variant}")
        elif axis.kind == "swarm":  # w000, w001, ... (wider for a swarm of 1,000 or more)
            parts.append(f"w{{mixture:0{max(3, len(str(len(axis.choices) - 1)))}d}}")
        elif axis.kind == "data_seeds":
            parts.append("d{data_seed}")
        else:
            parts.append("s{seed}")
    return "-".join(parts)


_FIELD = re.compile(r"\{([^{}:]+)(?::([^{}]*))?\}")


def _name(template: str, values: dict, indices: dict, where: str, variables: list) -> str:
    def sub(m: re.Match) -> str:
        key, fmt = m.group(1), m.group(2) or ""
        if key not in values:
            raise AblateError(
                f"{where}: point_name: unknown field {{{key}}} (known: {', '.join(variables)})"
            )
        v = values[key]
        if not isinstance(v, (int, float, str, bool)):
            v = indices.get(key, 0)  # a mapping or list value: its position on the axis
        if not fmt:
            return show(v)
        try:
            return format(v, fmt)
        except (ValueError, TypeError) as exc:
            raise AblateError(
                f"{where}: point_name: {{{key}:{fmt}}} cannot format {show_value(v)} "
                f"({show_value(str(exc))[1:-1]})"
            ) from None

    name = re.sub(r"[^A-Za-z0-9._=+-]", "_", _FIELD.sub(sub, template))
    if not name or name.startswith(".") or len(name) > 200:
        raise AblateError(
            f"{where}: point_name: {show_value(template)} gives {show_value(name)}, not a usable "
            "directory name (allowed: 1 to 200 characters, not starting with '.')"
        )
    return name
