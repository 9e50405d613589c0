"""Subcommands of this subsystem (registered by ``ablate.cli``). Imports stay inside the
handlers: ``ablate --help`` must not load pandas or matplotlib."""


def _report(args) -> None:
    from ablate.analysis.report import build_report

    path = build_report(
        args.runs,
        args.control,
        args.out,
        step=args.step,
        method=args.ci,
        threshold=args.lift_threshold,
    )
    print(path)


def add_commands(sub) -> None:
    """Add this subsystem's parsers to ``ablate``'s subparsers."""
    p = sub.add_parser(
        "report",
        help="compare runs against a control: capability tables and routing figures, one HTML file",
    )
    p.add_argument(
        "runs", nargs="+", help="run directories (or quoted glob patterns like 'runs/*')"
    )
    p.add_argument(
        "--control",
        required=True,
        help="the control: a run name, or a condition (a run's seed group)",
    )
    p.add_argument(
        "-o", "--out", default="report.html", help="the HTML file to write (default: report.html)"
    )
    p.add_argument(
        "--step",
        type=int,
        default=None,
        help="compare eval results of this step (default: each run's latest)",
    )
    p.add_argument(
        "--ci",
        choices=("bootstrap", "t"),
        default="bootstrap",
        help="confidence intervals across seeds: percentile bootstrap (default) or Student/Welch t",
    )
    p.add_argument(
        "--lift-threshold",
        type=float,
        default=1.5,
        help="an expert is 'high' for a domain above this lift "
        "(shared/exclusive experts; default 1.5)",
    )
    p.set_defaults(func=_report)
