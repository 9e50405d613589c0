"""``ablate mix fit`` and ``ablate mix propose`` (registered by ``ablate.cli``). Imports stay
inside the handlers: ``ablate --help`` must not load pandas or scikit-learn."""


def _fit(args) -> None:
    from ablate.mix.fit import fit_mixture

    path = fit_mixture(
        args.runs,
        [t for t in args.target.split(",")],
        args.out,
        models=args.models,
        folds=args.folds,
        stage=args.stage,
        overwrite=args.overwrite,
        seed=args.seed,
        interactions=args.interactions,
    )
    import json
    import os

    with open(os.path.join(path, "fit.json"), encoding="utf-8") as f:
        body = json.load(f)
    for t in body["targets"]:
        e = body["metrics"][t]
        m = e["models"][e["chosen"]]
        floor = "n/a" if e["noise_floor"] is None else f"{e['noise_floor']:.4g}"
        print(
            f"{t}: {e['chosen']} OOF RMSE {m['oof_rmse']:.4g} (mean predictor "
            f"{e['baseline_rmse']:.4g}, seed-noise floor {floor}), Spearman {m['spearman']:.3f}: "
            f"{e['verdict']}"
        )
    print(path)


def _propose(args) -> None:
    from ablate.mix.propose import propose_mixture, summary

    result = propose_mixture(
        args.fit,
        args.objective,
        args.out,
        prior=args.prior,
        kl=args.kl,
        max_epochs=args.max_epochs,
        pins=args.pin,
        name=args.name,
        seed=args.seed,
        overwrite=args.overwrite,
    )
    print(summary(result))
    print(args.out)


def add_commands(sub) -> None:
    """Add ``mix`` and its subcommands to ``ablate``'s subparsers."""
    mix = sub.add_parser("mix", help="fit mixing laws over a sweep's runs and propose a mixture")
    msub = mix.add_subparsers(dest="mix_command", required=True, metavar="{fit,propose}")

    p = msub.add_parser(
        "fit",
        help="regress scores on the swept stage's mixture weights, validated out of fold",
        description="Read runs that differ only in one stage's mix (and seeds), fit log-linear, "
        "gradient-boosting and Gaussian-process regressors per target metric, validate them "
        "k-fold out of fold against the seed-noise floor, and write FIT_DIR (fit.json, models/, "
        "fit.html).",
    )
    p.add_argument(
        "runs", nargs="+", help="run directories (or quoted glob patterns like 'runs/*')"
    )
    p.add_argument(
        "--target",
        required=True,
        metavar="METRIC[,METRIC]",
        help="score names as 'ablate report' shows them (e.g. bpb/math.text), comma-separated",
    )
    p.add_argument(
        "-o", "--out", required=True, metavar="FIT_DIR", help="the fit directory to write"
    )
    p.add_argument(
        "--models",
        default="loglinear,gbm,gp",
        help="comma-separated from loglinear, gbm, gp (default: all three)",
    )
    p.add_argument("--folds", type=int, default=5, help="cross-validation folds (default 5)")
    p.add_argument(
        "--stage", default=None, help="the swept stage (default: the only one whose mix differs)"
    )
    p.add_argument(
        "--interactions",
        choices=("auto", "on", "off"),
        default="auto",
        help="log-linear pairwise w_d*w_e terms (auto: on when there are runs enough)",
    )
    p.add_argument("--seed", type=int, default=0, help="folds and model seeds (default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing FIT_DIR")
    p.set_defaults(func=_fit)

    p = msub.add_parser(
        "propose",
        help="the mixture maximising a fit's predicted objective; writes a recipe",
        description="Maximise OBJECTIVE - kl*KL(w||prior) over the swept stage's mixture under "
        "each domain's repetition cap and the pins, print the predicted score with its "
        "uncertainty, and write the fit's base recipe with that mix (absolute token counts, the "
        "base stage's budget).",
    )
    p.add_argument("fit", metavar="FIT_DIR", help="a directory written by 'ablate mix fit'")
    p.add_argument(
        "--objective",
        required=True,
        metavar="EXPR",
        help="maximised; numbers, quoted metric names, + - * and (): "
        "\"2*'probes/accuracy/program_output' - 'bpb/math.text'\"",
    )
    p.add_argument(
        "--prior",
        default="tokens",
        metavar="tokens|uniform|FILE.yaml",
        help="the KL prior: domains' shares of available tokens (default), uniform, or a YAML "
        "mapping domain -> weight",
    )
    p.add_argument("--kl", type=float, default=0.0, help="KL regularisation weight (default 0)")
    p.add_argument(
        "--max-epochs",
        type=float,
        default=None,
        help="repetition cap for every domain (default: the base recipe's max_epochs)",
    )
    p.add_argument(
        "--pin", action="append", default=[], metavar="DOMAIN=SHARE", help="fix a domain's share"
    )
    p.add_argument("-o", "--out", required=True, metavar="RECIPE.yaml", help="the recipe to write")
    p.add_argument("--name", default=None, help="the recipe's name (default: <base run>-mix)")
    p.add_argument("--seed", type=int, default=0, help="the search's draws (default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing recipe file")
    p.set_defaults(func=_propose)
