"""``ablate sweep expand|submit|status|cancel SWEEP.yaml [--executor local|slurm]``
(registered by ``ablate.cli``).

Exit status of ``submit``: 0 when every point was submitted (Slurm), rendered (``--dry-run``)
or, with the local executor, completed or stopped on request; 1 when the local executor ran a
point that failed (training or eval exited non-zero or was killed, or training ended without
completing): one ``error: <sweep>: point <name>: <what> (log: <file>)`` line per such point on
stderr, after the summary; 2 for a refusal of bad input (one line, nothing started).
"""

from __future__ import annotations


def add_commands(sub) -> None:
    """Add this subsystem's parsers to ``ablate``'s subparsers."""
    sweep = sub.add_parser(
        "sweep",
        help="many runs from one sweep file: expand, submit (local or Slurm), status, cancel",
    )
    verbs = sweep.add_subparsers(dest="sweep_command", required=True)

    def verb(name: str, help: str, func):
        p = verbs.add_parser(name, help=help)
        p.add_argument("sweep", help="a sweep YAML (recipes/sweeps/)")
        p.add_argument(
            "--executor",
            choices=("local", "slurm"),
            default=None,
            help="what runs the points (default: the sweep file's 'executor', else local)",
        )
        p.set_defaults(func=func)
        return p

    p = verb(
        "expand",
        "write one resolved recipe per point into its run directory, pre-compile every blend, "
        "print the points",
        _expand,
    )
    p.add_argument("--no-compile", action="store_true", help="write the recipes only")
    p = verb(
        "submit", "expand, then start every point not yet completed, queued or running", _submit
    )
    p.add_argument(
        "--retry",
        action="store_true",
        help="also resubmit failed, preempted, interrupted, cancelled points",
    )
    p.add_argument(
        "--dry-run", action="store_true", help="render the job scripts / commands; start nothing"
    )
    p = verb("status", "a table: point, state, job, step, loss, tokens per domain", _status)
    p.add_argument(
        "--json", action="store_true", help="one JSON object per point instead of the table"
    )
    verb("cancel", "stop the sweep's queued and running jobs (training checkpoints first)", _cancel)


def _log(msg: str) -> None:
    """Progress (what was compiled, submitted, skipped) goes to stdout; stderr is for the
    one-line error."""
    print(msg, flush=True)


def _spec(args):
    from ablate.sweep.spec import load_sweep

    return load_sweep(args.sweep)


def _expand(args) -> None:
    from ablate.sweep.commands import expand, expand_table

    spec = _spec(args)
    points = expand(spec, _log, compile=not args.no_compile)
    print(expand_table(spec, points))


def _submit(args) -> int:
    import sys

    from ablate.sweep.commands import submit

    spec = _spec(args)
    outcomes = submit(
        spec, args.executor or spec.executor, _log, retry=args.retry, dry_run=args.dry_run
    )
    print(submit_summary(outcomes, args.dry_run))
    failed = [o for o in outcomes if o.failed]
    for o in failed:
        print(
            f"error: {spec._path or spec.name}: point {o.point}: {o.detail}"
            + (f" (log: {o.log})" if o.log else ""),
            file=sys.stderr,
        )
    return 1 if failed else 0


def submit_summary(outcomes: list, dry_run: bool) -> str:
    """``submitted 3 point(s)``; for points run here, how each ended (never "submitted")."""
    if dry_run:
        return f"rendered {len(outcomes)} point(s)"
    counts: dict[str, int] = {}
    for o in outcomes:
        counts[o.state] = counts.get(o.state, 0) + 1
    if set(counts) <= {"submitted"}:
        return f"submitted {len(outcomes)} point(s)"
    return f"ran {len(outcomes)} point(s): " + ", ".join(
        f"{n} {state}" for state, n in counts.items()
    )


def _status(args) -> None:
    import json

    from ablate.sweep.commands import status
    from ablate.sweep.state import status_table

    states = status(_spec(args), args.executor)
    if args.json:
        for s in states:
            print(json.dumps(s.to_dict()))
    else:
        print(status_table(states))


def _cancel(args) -> None:
    from ablate.sweep.commands import cancel

    n = cancel(_spec(args), _log)
    print(f"cancelled {n} point(s)")
