"""The runs registry: run directories -> tidy pandas frames joined with their resolved recipes.

``load_runs(["runs/*"])`` reads every run directory a pattern matches; ``runs_frame(runs)`` is
one row per run with every recipe field as a dotted column (``seed``, ``model.num_experts``,
``stages.0.mix.math.tokens``...), plus ``run``, ``path``, ``state``, ``step``, ``condition``.
``data_seed`` is always the effective data-order seed (a run without one: its ``seed``).

A **condition** is what an ablation varies: runs whose recipes agree on every field except
those in ``NOT_CONDITION`` (name, the init and data-order seeds, where files go, logging
cadence, parallel layout) are seeds of one condition. Its label is the runs' common name without
a seed suffix (``codemath-s1``, ``codemath-s2`` -> ``codemath``; ``ctl-s1-d2`` -> ``ctl``), or the
run's name when it is alone. ``seed_design`` says which of the two seeds varied within
conditions; ``seed_key`` is what pairs a run with its counterpart in another condition.

Reading is checking: every file a run is read from (``recipe.yaml``, ``status.json``,
``plan.json``, ``metrics.jsonl``, ``eval/step_<N>.json``) is checked for the shape this module
relies on, and a damaged one is one line naming the file (and line). Nothing here writes.
(Over 400 lines as ruff lays it out: the registry and the frames built from it are read
together.)
"""

from __future__ import annotations

import fnmatch
import glob
import json
import os
import re
from dataclasses import dataclass, field

from ablate.errors import AblateError, show
from ablate.io import read_json
from ablate.run_layout import RunLayout

# recipe fields that do not define an experimental condition
NOT_CONDITION = (
    "name",
    "seed",
    "data_seed",
    "run_dir",
    "cadence.*",
    "data.cache_dir",
    "parallelism.*",
    "training.backend",
    "training.micro_batch_size",
)
# an init-seed suffix (-s1, _seed2, -r3, 4) and/or a data-seed one (-d2, -ds2, _data_seed2), in
# either order: the sweep's default names end -s{seed}-d{data_seed}
_INIT_SUFFIX = r"(?:[-_.]?(?:seed|s|rep|r)?[-_]?\d+)"
_DATA_SUFFIX = r"(?:[-_.]?(?:data[-_]?seed|dseed|ds|d)[-_]?\d+)"
# (?<=.): the suffix never takes the whole name, so a condition named like a seed ("d1", "s2")
# keeps its name: "d1-s1" -> "d1", not "" -> "d1-s1"
_SEED_SUFFIX = re.compile(f"(?<=.)(?:{_DATA_SUFFIX}?{_INIT_SUFFIX}?{_DATA_SUFFIX}?)$", re.I)


@dataclass
class Run:
    """One run directory: its resolved recipe and status, the rest read on demand."""

    path: str
    name: str
    recipe: dict
    status: dict
    _cache: dict = field(default_factory=dict, repr=False)

    # ---- recipe facts
    @property
    def seed(self) -> int:
        """The initialisation seed."""
        return self.recipe.get("seed")

    @property
    def data_seed(self) -> int:
        """The data-order seed: the recipe's ``data_seed``, else (every run before it) ``seed``."""
        value = self.recipe.get("data_seed")
        return self.seed if value is None else value

    @property
    def k(self) -> int:
        return int(self.recipe["model"]["moe_router_topk"])

    @property
    def num_experts(self) -> int:
        return int(self.recipe["model"]["num_experts"])

    @property
    def state(self) -> str:
        return self.status.get("state", "unknown")

    def file(self, *parts: str) -> str:
        return os.path.join(self.path, *parts)

    def require(self, *names: str) -> None:
        """Raise a one-line error naming the first of ``names`` missing from the run directory."""
        for n in names:
            if not os.path.exists(self.file(n)):
                hint = {
                    RunLayout.METRICS: f"has it started training? state: {self.state}",
                    RunLayout.PLAN: "compile or train it first",
                    RunLayout.EVAL: "run 'ablate eval' on it",
                }.get(n, "")
                raise AblateError(f"{self.file(n)}: missing" + (f" ({hint})" if hint else ""))

    # ---- files read on demand (cached)
    @property
    def plan(self) -> dict:
        if "plan" not in self._cache:
            self.require(RunLayout.PLAN)
            path = self.file(RunLayout.PLAN)
            plan = read_object(path, "plan")
            domains = plan.get("domains", {})
            if not isinstance(domains, dict) or not all(
                isinstance(v, dict) and _is_int(v.get("tokens_realized")) for v in domains.values()
            ):
                raise AblateError(
                    f"{path}: domains: expected a mapping of domain -> "
                    "{tokens_realized: integer, ...} (damaged plan)"
                )
            self._cache["plan"] = plan
        return self._cache["plan"]

    def domain_tokens(self) -> dict:
        """Tokens each domain contributes over the whole run (the plan's realised totals)."""
        return {d: int(v["tokens_realized"]) for d, v in self.plan.get("domains", {}).items()}

    def metrics(self):
        """``metrics.jsonl`` as a DataFrame, one row per logged step."""
        if "metrics" not in self._cache:
            import pandas as pd

            self.require(RunLayout.METRICS)
            path = self.file(RunLayout.METRICS)
            rows = read_metrics(path)
            if not rows:
                raise AblateError(f"{path}: no rows (has it started training? state: {self.state})")
            self._cache["metrics"] = pd.DataFrame(rows)
        return self._cache["metrics"]

    def routing(self):
        """Training-time routing, every flush window (``routing_store.RoutingLog``)."""
        if "routing" not in self._cache:
            from ablate.analysis.routing_store import load_routing

            self._cache["routing"] = load_routing(self.path, k=self.k)
            self._cache["routing"].run = self.name
        return self._cache["routing"]

    def has_routing(self) -> bool:
        from ablate.analysis.routing_store import flush_files

        return bool(flush_files(self.path))

    def eval_steps(self) -> list[int]:
        out = []
        for p in glob.glob(self.file("eval", "step_*.json")):
            m = re.search(r"step_(\d+)\.json$", p)
            if m:
                out.append(int(m.group(1)))
        return sorted(out)

    def eval_results(self, step: int | None = None) -> dict:
        """``eval/step_<N>.json`` (the latest by default), checked against the eval contract."""
        steps = self.eval_steps()
        if not steps:
            raise AblateError(f"{self.path}: no eval/step_*.json (run 'ablate eval {self.path}')")
        step = steps[-1] if step is None else step
        key = ("eval", step)
        if key not in self._cache:
            path = self.file("eval", f"step_{step}.json")
            if not os.path.exists(path):
                raise AblateError(
                    f"{path}: missing (evaluated steps: {', '.join(map(str, steps))})"
                )
            body = read_json(path, "eval result")
            if (
                not isinstance(body, dict)
                or not str(body.get("format", "")).startswith("ablate.eval/")
                or not isinstance(body.get("tasks"), dict)
            ):
                raise AblateError(
                    f"{path}: not an eval result (expected format 'ablate.eval/1' with 'tasks')"
                )
            if "step" in body and not _is_int(body["step"]):
                raise AblateError(
                    f"{path}: step: {show(body['step'])} is not an integer (damaged eval result)"
                )
            for task, t in body["tasks"].items():
                if not isinstance(t, dict) or not isinstance(t.get("metrics"), dict):
                    raise AblateError(
                        f"{path}: tasks.{show(task)}: expected a mapping with 'metrics'"
                    )
            self._cache[key] = body
        return self._cache[key]

    def eval_routing(self, step: int | None = None):
        from ablate.analysis.routing_store import load_eval_routing

        return load_eval_routing(self.path, step, num_experts=self.num_experts)

    def eval_routing_steps(self) -> list[int]:
        from ablate.analysis.routing_store import eval_routing_steps

        return eval_routing_steps(self.path)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def read_object(path: str, what: str) -> dict:
    """A JSON object file ablate wrote; missing, damaged or not an object: one line."""
    body = read_json(path, what)
    if not isinstance(body, dict):
        raise AblateError(
            f"{path}: damaged {what}, expected a JSON object (got {type(body).__name__})"
        )
    return body


def read_metrics(path: str) -> list[dict]:
    """The rows of ``metrics.jsonl``, each a JSON object with an integer ``step``. The last line
    may be one training is still writing (no newline yet): it is left out, not an error."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError:
        raise AblateError(f"{path}: not text (expected JSON Lines: one object per line)") from None
    except OSError as exc:
        raise AblateError(f"{path}: unreadable ({exc.strerror})") from None
    if text.lstrip().startswith("["):
        raise AblateError(f"{path}: a JSON array, expected JSON Lines (one object per line)")
    rows, lines = [], text.split("\n")
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            if i == len(lines):  # no newline after it: a line being written
                break
            raise AblateError(f"{path}:{i}: not a JSON object ({exc.msg})") from None
        if not isinstance(row, dict):
            raise AblateError(
                f"{path}:{i}: not a JSON object (a {type(row).__name__}; expected JSON Lines)"
            )
        if not _is_int(row.get("step")):
            raise AblateError(
                f"{path}:{i}: step: {show(row.get('step'))} is not an integer (rows have a 'step')"
            )
        rows.append(row)
    return rows


def load_run(path: str) -> Run:
    """A run directory; needs ``recipe.yaml`` (the resolved recipe training writes)."""
    path = path.rstrip("/") or path
    if not os.path.isdir(path):
        raise AblateError(f"{path}: no such run directory")
    recipe_path = RunLayout(path).recipe
    if not os.path.exists(recipe_path):
        raise AblateError(f"{path}: not a run directory (no recipe.yaml)")
    recipe = _resolved_recipe(recipe_path)
    status_path = RunLayout(path).status
    status = (
        read_object(status_path, "status file")
        if os.path.exists(status_path)
        else {"state": "pending"}
    )
    return Run(path=path, name=recipe["name"], recipe=recipe, status=status)


def _resolved_recipe(path: str) -> dict:
    """The run's recipe through today's schema (so fields added since it ran get their defaults
    and every run has the same columns); a recipe the schema no longer accepts is kept as
    written: it is still the record of what ran."""
    from ablate.recipe.schema import parse_recipe
    from ablate.validate import load_yaml_file

    raw = load_yaml_file(path, "recipe")
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
        raise AblateError(f"{path}: not a resolved recipe (a mapping with a 'name')")
    model = raw.get("model")
    if isinstance(model, dict) and model.get("preset", "") is None:
        raw = {
            **raw,
            "model": {k: v for k, v in model.items() if k != "preset"},
        }  # to_dict writes 'preset: null'
    try:
        return parse_recipe(raw, path).to_dict()
    except AblateError:
        return raw


def load_runs(patterns) -> list[Run]:
    """Runs from paths or glob patterns (a string, or a list of them), in sorted path order.

    A pattern that matches nothing is an error; directories without ``recipe.yaml`` that a glob
    (not a plain path) matches are skipped; two runs with one name are an error.
    """
    if isinstance(patterns, str):
        patterns = patterns.split()
    paths, explicit = [], set()
    for pattern in patterns:
        if glob.has_magic(pattern):
            matched = sorted(
                p
                for p in glob.glob(pattern)
                if os.path.isdir(p) and os.path.exists(RunLayout(p).recipe)
            )
            if not matched:
                raise AblateError(f"{pattern}: matches no run directory")
            paths += matched
        else:
            paths.append(pattern)
            explicit.add(pattern)
    runs, seen = [], {}
    for p in dict.fromkeys(os.path.normpath(p) for p in paths):
        run = load_run(p)
        if run.name in seen:
            raise AblateError(f"two runs are named {run.name!r}: {seen[run.name]} and {p}")
        seen[run.name] = p
        runs.append(run)
    if not runs:
        raise AblateError("no runs given")
    return runs


# ------------------------------------------------------------------ frames


def flatten(value, prefix: str = "") -> dict:
    """Nested dicts and lists -> ``{"a.b.0.c": leaf}``."""
    out = {}
    if isinstance(value, dict):
        for k, v in value.items():
            out.update(flatten(v, f"{prefix}{k}."))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out.update(flatten(v, f"{prefix}{i}."))
    else:
        out[prefix[:-1]] = value
    return out


def _is_condition_field(column: str, exclude) -> bool:
    return not any(fnmatch.fnmatchcase(column, pat) for pat in exclude)


def runs_frame(runs: list[Run], exclude=NOT_CONDITION):
    """One row per run: ``run, path, state, step, condition`` and every recipe field, dotted."""
    import pandas as pd

    rows = []
    for r in runs:
        row = {"run": r.name, "path": r.path, "state": r.state, "step": r.status.get("step")}
        for key, value in flatten(r.recipe).items():
            if key != "data_seed":  # the effective one, beside seed, for every run
                row[key] = value
            if key == "seed":
                row["data_seed"] = r.data_seed
        row.setdefault("data_seed", r.data_seed)  # a recipe kept as written, without a seed
        rows.append(row)
    frame = pd.DataFrame(rows)
    frame.insert(4, "condition", condition_labels(frame, exclude))
    return frame


def seed_key(run: Run) -> tuple:
    """What pairs a run with its counterpart in another condition: (init seed, data seed)."""
    return (run.seed, run.data_seed)


def seed_design(frame) -> dict:
    """Which seeds varied within conditions: ``init`` and ``data`` (bools), ``pairs`` (every
    (seed, data_seed) of the frame, sorted), ``together`` (both varied, but in lockstep: in each
    condition every init seed has one data seed and the other way round, as when data_seed
    followed seed) and ``summary``, a line for reports (``seeds varied: data order only``...)."""
    seeds = [_norm(v) for v in frame["seed"]]
    data = [_norm(v) for v in frame["data_seed"]] if "data_seed" in frame.columns else seeds
    data = [s if d is None else d for s, d in zip(seeds, data)]
    by_condition: dict = {}
    for c, s, d in zip(frame["condition"], seeds, data):
        by_condition.setdefault(c, set()).add((s, d))
    groups = list(by_condition.values())
    init = any(len({s for s, _ in g}) > 1 for g in groups)
    varied_data = any(len({d for _, d in g}) > 1 for g in groups)
    together = (
        init
        and varied_data
        and all(len({s for s, _ in g}) == len(g) == len({d for _, d in g}) for g in groups)
    )
    pairs = sorted(set(zip(seeds, data)), key=lambda p: tuple(-1 if x is None else x for x in p))
    if together:
        old = all(s == d for s, d in pairs)
        what = "init and data order together" + (
            " (old style)" if old else " (each init seed with its own data seed)"
        )
    elif init and varied_data:
        what = "init and data order independently"
    elif init:
        what = "init only (one data order)"
    elif varied_data:
        what = "data order only (one initialisation)"
    else:
        what = "none (one seed per condition)"
    return {
        "init": init,
        "data": varied_data,
        "pairs": pairs,
        "together": together,
        "summary": f"seeds varied: {what}",
    }


def condition_columns(frame, exclude=NOT_CONDITION) -> list[str]:
    meta = {"run", "path", "state", "step", "condition"}
    return [c for c in frame.columns if c not in meta and _is_condition_field(c, exclude)]


def varying_columns(frame, exclude=NOT_CONDITION) -> list[str]:
    """Recipe columns whose values differ between runs (what the comparison is about)."""
    return [
        c for c in condition_columns(frame, exclude) if frame[c].map(_key).nunique(dropna=False) > 1
    ]


def _norm(v):
    """numpy scalars -> Python; 2.0 -> 2 (a column with gaps turns ints into floats);
    NaN -> None."""
    if hasattr(v, "item") and not isinstance(v, (list, dict, str)):
        try:
            v = v.item()
        except (ValueError, AttributeError):
            pass
    if isinstance(v, float):
        if v != v:
            return None
        if v.is_integer():
            return int(v)
    return v


def _key(v):
    return json.dumps(_norm(v), sort_keys=True, default=str)


def condition_labels(frame, exclude=NOT_CONDITION) -> list[str]:
    """A label per row: rows equal on every condition field share one."""
    cols = condition_columns(frame, exclude)
    keys = (
        [tuple(_key(row[c]) for c in cols) for _, row in frame[cols].iterrows()]
        if cols
        else [()] * len(frame)
    )
    groups: dict = {}
    for i, key in enumerate(keys):
        groups.setdefault(key, []).append(i)
    labels, used = [None] * len(frame), set()
    for members in groups.values():
        names = [str(frame["run"].iloc[i]) for i in members]
        label = _group_label(names)
        base, n = label, 2
        while label in used:
            label, n = f"{base}#{n}", n + 1
        used.add(label)
        for i in members:
            labels[i] = label
    return labels


def _group_label(names: list[str]) -> str:
    if len(names) == 1:
        return names[0]
    stripped = {_SEED_SUFFIX.sub("", n) or n for n in names}
    if len(stripped) == 1:
        return stripped.pop()
    prefix = os.path.commonprefix(names).rstrip("-_.")
    return prefix or f"{names[0]}+{len(names) - 1}"


def resolve_control(frame, control: str) -> str:
    """The condition of ``control`` (a run name or a condition label)."""
    if control in set(frame["condition"]):
        return control
    hit = frame.loc[frame["run"] == control, "condition"]
    if len(hit):
        return hit.iloc[0]
    raise AblateError(
        f"control {control!r} is not among the runs (runs: {', '.join(map(str, frame['run']))}; "
        f"conditions: {', '.join(dict.fromkeys(map(str, frame['condition'])))})"
    )


def differences(frame, control: str, exclude=NOT_CONDITION) -> dict:
    """Per condition, ``{field: (control value, its value)}`` for the recipe fields that differ."""
    cond = resolve_control(frame, control)
    cols = condition_columns(frame, exclude)
    first = frame.groupby("condition", sort=False).first()
    base = first.loc[cond]
    out = {}
    for label, row in first.iterrows():
        out[label] = {
            c: (_plain(base[c]), _plain(row[c])) for c in cols if _key(base[c]) != _key(row[c])
        }
    return out


def _plain(v):
    return _norm(v)


def join_recipe(df, frame, columns=None):
    """``df`` (any frame with a ``run`` column: scores, metrics ...) with recipe columns of
    ``frame`` joined on the run: ``columns`` (default: the ones that vary between runs)."""
    columns = varying_columns(frame) if columns is None else list(columns)
    extra = [c for c in ["condition", "seed", *columns] if c not in df.columns or c == "run"]
    return df.merge(frame[["run", *dict.fromkeys(extra)]], on="run", how="left")


def metrics_frame(runs: list[Run], frame=None):
    """Every run's ``metrics.jsonl`` stacked, with ``run`` and ``condition`` columns."""
    import pandas as pd

    frame = runs_frame(runs) if frame is None else frame
    cond = dict(zip(frame["run"], frame["condition"]))
    parts = []
    for r in runs:
        m = r.metrics().copy()
        m.insert(0, "run", r.name)
        m.insert(1, "condition", cond.get(r.name, r.name))
        parts.append(m)
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
