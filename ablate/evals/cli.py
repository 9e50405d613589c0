"""``ablate eval RUN_DIR [--tasks a,b] [--step N]`` and ``ablate export hf RUN_DIR -o DIR``
(registered by ``ablate.cli``)."""

from __future__ import annotations


def add_commands(sub) -> None:
    p = sub.add_parser("eval", help="capability scores of a run's checkpoints -> RUN_DIR/eval/step_<N>.json")
    p.add_argument("run_dir", help="a run directory (runs/<name>)")
    p.add_argument("--tasks", default=None,
                   help="comma-separated tasks, or 'all' (default: bpb, probes, routing, gsm8k_gold, humaneval_gold, "
                        "mbpp_gold, math_gold; generative: gsm8k_cot, gsm8k_pot, humaneval, mbpp, math_cot, math_pot)")
    p.add_argument("--step", default=None,
                   help="checkpoint step(s): N, N,M,..., 'all', or 0 for the initialisation (default: the latest)")
    p.add_argument("--limit", type=int, default=None, help="score only the first N samples of each task")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--backend", choices=("auto", "cpu", "cuda"), default="auto",
                   help="auto: the recipe's training.backend (CUDA when torch sees a GPU)")
    p.add_argument("--bpb-tokens", type=int, default=65_536, help="held-out tokens per domain for bpb (whole documents)")
    p.add_argument("--gsm8k", default=None, help="GSM8K test.jsonl (default: ../shared/benchmarks/gsm8k/test.jsonl)")
    p.add_argument("--shots", type=int, default=4, help="few-shot examples for GSM8K")
    p.add_argument("--mbpp", default=None, help="MBPP mbpp.jsonl (default: ../shared/benchmarks/mbpp/mbpp.jsonl)")
    p.add_argument("--math", default=None,
                   help="a MATH-format JSONL: problem, solution[, answer, level, subject] "
                        "(default: ../shared/benchmarks/math500/test.jsonl)")
    p.add_argument("--samples", type=int, default=1, help="completions per problem for generative tasks (pass@k)")
    p.add_argument("--temperature", type=float, default=0.0, help="sampling temperature (0: greedy, the default)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling: keep the top tokens holding this mass")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (scores are deterministic for a seed)")
    p.add_argument("--pass-k", default=None,
                   help="comma-separated k for pass@k, each <= --samples (default: 1, 10, 100... and --samples)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="generation length limit (default: 256)")
    p.add_argument("--lm-eval-include", default=None, help="a directory of local lm-eval task YAMLs (for lm_eval:<task>)")
    p.add_argument("--allow-unsandboxed-code", action="store_true",
                   help="let lm-eval code tasks (lm_eval:humaneval, lm_eval:mbpp ...) execute generated code "
                        "UNSANDBOXED, in lm-eval's own process with your permissions; off by default")
    p.set_defaults(func=_eval)

    export = sub.add_parser("export", help="a run's checkpoint in another format").add_subparsers(
        dest="export_format", required=True)
    p = export.add_parser("hf", help="a Hugging Face transformers model directory (Llama / Mixtral)")
    p.add_argument("run_dir", help="a run directory (runs/<name>)")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest; 0: the initialisation)")
    p.add_argument("-o", "--out", required=True, help="output directory (written atomically)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")
    p.set_defaults(func=_export_hf)


def _export_hf(args) -> None:
    from ablate.evals.export_hf import export_hf

    print(export_hf(args.run_dir, args.out, step=args.step, overwrite=args.overwrite))


def _eval(args) -> None:
    from ablate.errors import AblateError
    from ablate.evals.loading import available_steps, read_run
    from ablate.evals.runner import evaluate, summary
    from ablate.evals.tasks import select
    from ablate.evals.tasks.base import EvalOptions

    read_run(args.run_dir)
    tasks, chosen = select(args.tasks)
    if args.limit is not None and args.limit < 1:
        raise AblateError(f"--limit: must be a positive number of samples, got {args.limit}")
    for flag, value in (("--batch-size", args.batch_size), ("--bpb-tokens", args.bpb_tokens)):
        if value < 1:
            raise AblateError(f"{flag}: must be positive, got {value}")
    steps: list[int | None]
    if args.step is None:
        steps = [None]
    elif args.step == "all":
        steps = available_steps(args.run_dir)
        if not steps:
            raise AblateError(f"{args.run_dir}: has no complete checkpoint yet")
    else:
        try:
            steps = [int(s) for s in args.step.split(",")]
        except ValueError:
            raise AblateError(f"--step: expected N, N,M,... or 'all', got {args.step!r}") from None
    from ablate.evals.samples import check_sampling, resolve_ks

    check_sampling(args.samples, args.temperature, args.top_p)
    pass_k = None
    if args.pass_k is not None:
        try:
            pass_k = tuple(int(k) for k in args.pass_k.split(","))
        except ValueError:
            raise AblateError(f"--pass-k: expected comma-separated integers, got {args.pass_k!r}") from None
        resolve_ks(args.samples, pass_k)
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        raise AblateError(f"--max-new-tokens: must be positive, got {args.max_new_tokens}")
    extra = {} if args.max_new_tokens is None else {"max_new_tokens": args.max_new_tokens}
    options = EvalOptions(limit=args.limit, batch_size=args.batch_size, bpb_tokens=args.bpb_tokens, gsm8k_path=args.gsm8k,
                          num_shots=args.shots, lm_eval_include=args.lm_eval_include, mbpp_path=args.mbpp,
                          math_path=args.math, samples=args.samples, temperature=args.temperature, top_p=args.top_p,
                          seed=args.seed, pass_k=pass_k, allow_unsandboxed_code=args.allow_unsandboxed_code, **extra)
    for task in tasks:
        task.validate(options)  # data files checked before a model is loaded
    for path in evaluate(args.run_dir, tasks, steps, options, chosen=chosen, backend=args.backend):
        print(summary(path))
