"""The task registry: one task per file; ``ablate eval --tasks`` names them."""

from __future__ import annotations

from ablate.errors import AblateError
from ablate.evals.tasks.base import Task


def registry() -> dict[str, Task]:
    from ablate.evals.tasks.bpb import BitsPerByte
    from ablate.evals.tasks.gsm8k import GSM8KChainOfThought, GSM8KGold, GSM8KProgramOfThought
    from ablate.evals.tasks.hendrycks_math import MATHChainOfThought, MATHGold, MATHProgramOfThought
    from ablate.evals.tasks.humaneval import HumanEval, HumanEvalGold
    from ablate.evals.tasks.mbpp import MBPP, MBPPGold
    from ablate.evals.tasks.probes import Probes
    from ablate.evals.tasks.routing import RoutingTask

    tasks = [
        BitsPerByte(),
        Probes(),
        RoutingTask(),
        GSM8KGold(),
        HumanEvalGold(),
        MBPPGold(),
        MATHGold(),
        GSM8KChainOfThought(),
        GSM8KProgramOfThought(),
        HumanEval(),
        MBPP(),
        MATHChainOfThought(),
        MATHProgramOfThought(),
    ]
    return {t.name: t for t in tasks}


# scored by default: the likelihood tasks, the probes and the routing capture. The generative
# benchmarks (GSM8K and MATH with generation, HumanEval and MBPP pass@k) cost minutes even for a
# toy model.
DEFAULT_TASKS = (
    "bpb",
    "probes",
    "routing",
    "gsm8k_gold",
    "humaneval_gold",
    "mbpp_gold",
    "math_gold",
)


def select(names: str | None) -> tuple[list[Task], bool]:
    """Tasks named by ``--tasks`` (comma separated, or ``all``); the bool says whether the user
    chose them (a chosen task that cannot run is an error, a default one is skipped)."""
    tasks = registry()
    if names is None:
        return [tasks[n] for n in DEFAULT_TASKS], False
    if names.strip() == "all":
        return list(tasks.values()), True
    chosen = []
    for name in (n.strip() for n in names.split(",")):
        if name.startswith("lm_eval:") and len(name) > len("lm_eval:"):
            from ablate.evals.tasks.lm_eval_task import LmEvalTask

            chosen.append(LmEvalTask(name[len("lm_eval:") :]))
            continue
        if name not in tasks:
            raise AblateError(
                f"--tasks: unknown task {name!r} (known: {', '.join(tasks)}, lm_eval:<task>, or "
                "'all')"
            )
        chosen.append(tasks[name])
    return chosen, True
