"""``ablate``: the command line. Thin: parse arguments, call the library, print.

User errors (``AblateError``) print one line and exit 2; anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings

from ablate.errors import AblateError
from ablate.faults import Terminated
from ablate.io import OS_REASONS, os_error_line


def _data_prepare(args) -> None:
    from ablate.data.prepare import prepare, summary_line

    result = prepare(
        args.spec, args.out, workers=args.workers, overwrite=args.overwrite, tagged=args.tagged
    )
    print(summary_line(result))


def _data_tag(args) -> None:
    from ablate.data.tagging.command import summary_line, tag_corpora

    sources = tag_corpora(args.spec, args.out, workers=args.workers, overwrite=args.overwrite)
    print(summary_line(args.out, sources))


def _data_inspect(args) -> None:
    from ablate.data.inspect import domain_table
    from ablate.data.manifest import load_manifest

    manifest = load_manifest(args.manifest)
    if args.verify:
        manifest.verify()
    print(domain_table(manifest))


def _compile(args) -> None:
    from ablate.recipe.compile import compile_recipe, plan_table
    from ablate.recipe.schema import load_recipe

    recipe = load_recipe(args.recipe)
    plan, path = compile_recipe(recipe, dry_run=args.dry_run)
    if args.dry_run:
        print(plan_table(plan))
    else:
        print(path)


def _train(args) -> None:
    from ablate.evals.callback import eval_callbacks
    from ablate.recipe.schema import load_recipe
    from ablate.train.loop import save_initial_weights, train

    if args.save_init:
        print(save_initial_weights(args.recipe, args.save_init))
        return
    result = train(
        args.recipe,
        resume=args.resume,
        reset_optimizer=args.reset_optimizer,
        callbacks=eval_callbacks(load_recipe(args.recipe)),
    )
    if result["state"] == "completed":
        print(f"completed {result['step']} steps")


class OneLineParser(argparse.ArgumentParser):
    """argparse, held to the CLI's refusal contract: a bad flag is one line and exit 2 (argparse
    prints the whole usage block first; ``--help`` still shows it)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see: {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="ablate", description="Controlled data ablations for MoE pretraining."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="prepare and inspect domain-tagged datasets").add_subparsers(
        dest="data_command", required=True
    )
    p = data.add_parser(
        "prepare", help="corpora YAML (or 'toyworld') -> megatron-core indexed datasets + manifest"
    )
    p.add_argument("spec", help="a corpora YAML, or the built-in name 'toyworld'")
    p.add_argument("--out", required=True, help="output directory (written atomically)")
    p.add_argument(
        "--workers", type=int, default=None, help="tokenizer processes (default: all cores)"
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace a different dataset already in --out"
    )
    p.add_argument(
        "--tagged",
        metavar="DIR",
        default=None,
        help="reuse the shards 'ablate data tag' wrote to DIR (sources tagged from the same "
        "inputs with the same tagger; the YAML's thresholds decide the domains again)",
    )
    p.set_defaults(func=_data_prepare)

    p = data.add_parser(
        "tag",
        help="tag the sources that name a tagger (code, math) into shards with domain and scores",
    )
    p.add_argument("spec", help="a corpora YAML whose sources say 'tagger: code' or 'tagger: math'")
    p.add_argument("--out", required=True, help="output directory (written atomically)")
    p.add_argument(
        "--workers", type=int, default=None, help="tagging processes (default: all cores)"
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace an earlier 'ablate data tag' output"
    )
    p.set_defaults(func=_data_tag)

    p = data.add_parser("inspect", help="per-domain token table of a manifest")
    p.add_argument("manifest", help="DIR/manifest.json (or DIR)")
    p.add_argument(
        "--verify", action="store_true", help="also re-hash every dataset against its fingerprint"
    )
    p.set_defaults(func=_data_inspect)

    p = sub.add_parser("compile", help="recipe -> plan.json + megatron-core blend indices")
    p.add_argument("recipe", help="a recipe YAML")
    p.add_argument(
        "--dry-run", action="store_true", help="print the plan as a table; build nothing"
    )
    p.set_defaults(func=_compile)

    p = sub.add_parser(
        "train", help="train a recipe (one process; use torchrun launchers/pretrain.py for more)"
    )
    p.add_argument("recipe", help="a recipe YAML")
    p.add_argument(
        "--resume",
        choices=("auto", "never"),
        default="auto",
        help="auto: continue from the latest complete checkpoint in the run directory (any layout)",
    )
    p.add_argument(
        "--reset-optimizer",
        action="store_true",
        help="resume the model weights only; the optimizer starts fresh "
        "(e.g. after an expert-parallel change)",
    )
    p.add_argument(
        "--save-init",
        metavar="DIR",
        help="save the recipe's initial weights as a checkpoint at DIR "
        "(for training.init_from) and exit",
    )
    p.set_defaults(func=_train)

    # Later stages of the pipeline own their subcommands (one concept per file): each module's
    # ``add_commands(sub)`` adds its parsers; imports there stay light so ``ablate --help`` is fast.
    for module in _SUBSYSTEM_CLIS:
        importlib.import_module(module).add_commands(sub)
    return parser


_SUBSYSTEM_CLIS = ("ablate.evals.cli", "ablate.sweep.cli", "ablate.analysis.cli", "ablate.mix.cli")


def main(argv: list[str] | None = None) -> int:
    # megatron-core warns about Apex and CUDA-graph options on every import: noise for CPU users
    warnings.filterwarnings("ignore", module=r"megatron\.")
    args = build_parser().parse_args(argv)
    try:
        # a command returns its exit status when it is not 0 (sweep submit: 1 if a point failed)
        code = args.func(args) or 0
    except AblateError as exc:
        # Under torchrun every rank validates the same recipe: one line from rank 0 is enough.
        if os.environ.get("RANK", "0") == "0":
            print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        # The backstop for a full disk, a read-only file system or a missing permission met
        # where no writer named its path itself: still one line, not a traceback.
        if exc.errno not in OS_REASONS:
            raise
        if os.environ.get("RANK", "0") == "0":
            print(f"error: {os_error_line(exc.filename or '.', exc)}", file=sys.stderr)
        return 2
    except Terminated as exc:  # SIGTERM outside training's own handler; cleanup has run
        print(f"stopped by {exc}", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
