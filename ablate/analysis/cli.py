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
        correction=args.correction,
        dose=args.dose,
        aa=args.aa,
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
    p.add_argument(
        "--correction",
        choices=("auto", "holm", "bh", "none"),
        default="auto",
        help="multiple-comparison correction of each table of verdicts: Holm (family-wise "
        "error), Benjamini-Hochberg (false discovery rate), auto (default: Holm for families of "
        "up to 20 comparisons, BH above) or none",
    )
    p.add_argument(
        "--dose",
        metavar="FIELD",
        default=None,
        help="a numeric recipe field the runs vary (a density, a share, a token budget, e.g. "
        "stages.0.mix.math.density.math.structured, as the report's run table names it): fit "
        "every score's trend in it",
    )
    p.add_argument(
        "--aa",
        action="store_true",
        help="A/A calibration: compare the control's runs in another data order (data_seed "
        "other than seed) against its usual runs and report the observed false-positive rate",
    )
    p.set_defaults(func=_report)
