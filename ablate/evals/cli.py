"""``ablate eval RUN_DIR [--tasks a,b] [--step N] [options]`` and
``ablate export hf RUN_DIR -o DIR`` (registered by ``ablate.cli``).

``ablate eval``'s scoring options are generated from ``EvalOptions``' fields (name, type,
default, help and range live there, once): ``add_option_flags`` adds them to a parser and
``options_from_args`` builds the ``EvalOptions`` back, refusing a value out of its range (a
non-finite number included) in one line naming the flag, before any model is loaded.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing

from ablate.errors import AblateError, show
from ablate.evals.tasks.base import EvalOptions


def add_commands(sub) -> None:
    p = sub.add_parser(
        "eval", help="capability scores of a run's checkpoints -> RUN_DIR/eval/step_<N>.json"
    )
    p.add_argument("run_dir", help="a run directory (runs/<name>)")
    p.add_argument(
        "--tasks",
        default=None,
        help="comma-separated tasks, or 'all' (default: bpb, probes, routing, "
        "gsm8k_gold, humaneval_gold, mbpp_gold, math_gold; generative: gsm8k_cot, "
        "gsm8k_pot, humaneval, mbpp, math_cot, math_pot)",
    )
    p.add_argument(
        "--step",
        default=None,
        help="checkpoint step(s): N, N,M,..., 'all', or 0 for the initialisation "
        "(default: the latest)",
    )
    p.add_argument(
        "--backend",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="auto: the recipe's training.backend (CUDA when torch sees a GPU)",
    )
    add_option_flags(p, EvalOptions)
    p.set_defaults(func=_eval)

    export = sub.add_parser("export", help="a run's checkpoint in another format").add_subparsers(
        dest="export_format", required=True
    )
    p = export.add_parser(
        "hf", help="a Hugging Face transformers model directory (Llama / Mixtral / Qwen2-MoE)"
    )
    p.add_argument("run_dir", help="a run directory (runs/<name>)")
    p.add_argument(
        "--step",
        type=int,
        default=None,
        help="checkpoint step (default: the latest; 0: the initialisation)",
    )
    p.add_argument("-o", "--out", required=True, help="output directory (written atomically)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier export in the output directory (never anything else)",
    )
    p.set_defaults(func=_export_hf)


# ----------------------------------------------------------------- flags from EvalOptions


def flag_of(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def _scalar(hint) -> tuple[type, bool]:
    """The argument type of a field's annotation (``int | None`` -> int) and whether it is a
    comma-separated tuple (``tuple[int, ...]``)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    if typing.get_origin(hint) is tuple:
        return typing.get_args(hint)[0], True
    return hint, False


def _number(x) -> str:
    if isinstance(x, int):
        return "2**63 - 1" if x == 2**63 - 1 else str(x)
    return f"{x:g}"


def _bounds_text(meta) -> str:
    parts = [
        f"{op} {_number(meta[key])}"
        for key, op in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<="))
        if key in meta
    ]
    return " and ".join(parts)


def add_option_flags(parser: argparse.ArgumentParser, cls: type = EvalOptions) -> None:
    """One flag per field of ``cls`` (a bool is a switch, a tuple a comma-separated list), its
    help ending in the default and the allowed range. Values are checked by
    ``options_from_args`` (so the message can name the range), not by argparse."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if "help" not in meta:
            continue
        kind, many = _scalar(hints[f.name])
        help_text = meta["help"]
        if kind is bool:
            parser.add_argument(flag_of(f), dest=f.name, action="store_true", help=help_text)
            continue
        extra = []
        if f.default is not None:
            extra.append(f"default: {f.default}")
        if _bounds_text(meta):
            extra.append(f"allowed: {_bounds_text(meta)}")
        if extra and "(default:" not in help_text:
            help_text += f" ({'; '.join(extra)})"
        metavar = meta.get("metavar") or {int: "N", float: "X"}.get(kind, "VALUE")
        parser.add_argument(
            flag_of(f),
            dest=f.name,
            default=None,
            metavar=metavar,
            help=help_text.replace("%", "%%"),
        )


def _parse(text: str, kind: type, flag: str):
    what = {int: "an integer", float: "a number", str: "a string"}.get(kind, kind.__name__)
    try:
        value = kind(text)
    except ValueError:
        raise AblateError(f"{flag}: expected {what}, got {show(text)}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise AblateError(f"{flag}: {show(text)} is not a finite number")
    return value


def options_from_args(args: argparse.Namespace, cls: type = EvalOptions):
    """``cls`` from the flags ``add_option_flags`` added: each given value parsed and checked
    against its field's range; absent ones keep the field's default."""
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        if "help" not in f.metadata or getattr(args, f.name, None) is None:
            continue
        raw, meta, flag = getattr(args, f.name), f.metadata, flag_of(f)
        kind, many = _scalar(hints[f.name])
        if kind is bool:
            values[f.name] = bool(raw)
            continue
        if many:
            items = [t.strip() for t in raw.split(",")]
            if not all(items):
                raise AblateError(f"{flag}: expected comma-separated values, got {show(raw)}")
            value = tuple(_parse(t, kind, flag) for t in items)
        else:
            value = _parse(raw, kind, flag)
        for v in value if many else (value,):
            _check_range(v, meta, flag)
        values[f.name] = value
    return cls(**values)


def _check_range(value, meta, flag: str) -> None:
    if not isinstance(value, (int, float)):
        return
    ok = (
        ("gt" not in meta or value > meta["gt"])
        and ("ge" not in meta or value >= meta["ge"])
        and ("lt" not in meta or value < meta["lt"])
        and ("le" not in meta or value <= meta["le"])
    )
    if not ok:
        raise AblateError(f"{flag}: {show(value)} is out of range (allowed: {_bounds_text(meta)})")


# ----------------------------------------------------------------------------- commands


def _export_hf(args) -> None:
    from ablate.evals.export_hf import export_hf

    print(export_hf(args.run_dir, args.out, step=args.step, overwrite=args.overwrite))


def parse_steps(text: str | None, run_dir: str) -> list[int | None]:
    """``--step``: None (the latest), ``all``, or comma-separated non-negative integers."""
    from ablate.evals.loading import available_steps, checkpoint_problem, usable_steps
    from ablate.train.checkpoint import checkpoint_dir

    if text is None:
        return [None]
    if text.strip() == "all":
        steps = usable_steps(run_dir)
        if not steps:
            complete = available_steps(run_dir)
            if complete:
                path = checkpoint_dir(run_dir, complete[-1])
                raise AblateError(
                    f"{path}: damaged checkpoint "
                    f"({checkpoint_problem(run_dir, complete[-1])}), and every "
                    "earlier one too (train again, or pass --step 0)"
                )
            raise AblateError(f"{run_dir}: has no complete checkpoint yet")
        return list(steps)
    try:
        steps = [int(s) for s in text.split(",")]
    except ValueError:
        raise AblateError(f"--step: expected N, N,M,... or 'all', got {show(text)}") from None
    for s in steps:
        if s < 0:
            raise AblateError(
                f"--step: {s} is out of range (allowed: a checkpoint step >= 0, "
                "0: the initialisation)"
            )
    return list(dict.fromkeys(steps))


def _eval(args) -> None:
    from ablate.evals.loading import read_run
    from ablate.evals.runner import evaluate, summary
    from ablate.evals.samples import check_sampling, resolve_ks
    from ablate.evals.tasks import select

    options = options_from_args(args)  # flags first: no file is read for a bad number
    read_run(args.run_dir)
    tasks, chosen = select(args.tasks)
    steps = parse_steps(args.step, args.run_dir)
    check_sampling(options.samples, options.temperature, options.top_p)
    if options.pass_k is not None:
        resolve_ks(options.samples, options.pass_k)
    for task in tasks:
        task.validate(options)  # data files checked before a model is loaded
    for path in evaluate(args.run_dir, tasks, steps, options, chosen=chosen, backend=args.backend):
        print(summary(path))
