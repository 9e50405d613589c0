"""Toy-world probes: held-out questions whose answers the world determines.

For each probe file the manifest lists (``math_answer``, ``program_output``, ``fact_recall``):

* ``accuracy/<probe>``: greedy generation from the prompt, the answer read off by the probe's
  rule, exact match with the world's answer;
* ``gold_bpb/<probe>``: bits per byte of the gold continuation given the prompt (continuous:
  moves long before accuracy does), and for math, per solution style
  (``gold_bpb/math_answer/math.structured`` ...): which written form of the reasoning the model
  finds likely.

Difficulty-ladder files (``math_ladder_<k>``, ``program_ladder_<k>``: neutral ``Q:``/``A:``
prompts whose answer is a bare number) are read by the first integer of at most 8 greedy tokens
up to a newline, and, because each row lists ``choices``, also scored by likelihood:

* ``choice_accuracy/<probe>``: the choice whose `` <choice>\n`` continuation has the highest
  total log-likelihood given the prompt (ties: the earliest listed) is the model's answer; with
  10 choices chance is 10%, and no generation format is needed to earn it;
* ``accuracy/math_ladder``, ``choice_accuracy/math_ladder`` (and ``program_ladder``): pooled
  over the rungs (every ladder row counts once).

The gold continuation is one of the choices, so its bits per byte come from the same scores.
Cost: ten scored continuations per ladder row, all of a file in one batched call; on one CPU
core the toy-moe model takes about 40 s for 100 probes x 6 ladder files (about as long as the
three older files at 100 probes each, whose math generation runs to 160 tokens).
"""

from __future__ import annotations

import math
import os
import re

from ablate.errors import AblateError
from ablate.evals.tasks.base import Task, TaskResult, file_digest, read_jsonl

_NUMBER = re.compile(r"-?\d+")
_LADDER = re.compile(r"^(math_ladder|program_ladder)_\d+$")


def _math_answer(text: str) -> str | None:
    """``Answer: N`` (structured, code), else ``The answer is N`` (text), else the last number."""
    for pattern in (r"Answer:\s*(-?\d+)", r"answer is\s*(-?\d+)"):
        m = re.search(pattern, text)
        if m:
            return m.group(1)
    found = _NUMBER.findall(text)
    return found[-1] if found else None


def _program_output(text: str) -> str | None:
    m = _NUMBER.match(text.strip())
    return m.group(0) if m else None


def _fact(text: str) -> str | None:
    return text.strip().split("\n")[0].rstrip(" .") or None


def _first_integer(text: str) -> str | None:
    m = _NUMBER.search(text)
    return m.group(0) if m else None


# probe -> (stop strings, max new tokens, answer rule)
RULES = {
    "math_answer": (("\n\n", "Question:"), 160, _math_answer),
    "program_output": (("\n",), 8, _program_output),
    "fact_recall": (("\n", "."), 24, _fact),
}
_LADDER_RULE = (("\n",), 8, _first_integer)
_DEFAULT_RULE = (("\n",), 32, lambda t: t.strip() or None)


def rule_for(probe: str) -> tuple:
    if probe in RULES:
        return RULES[probe]
    return _LADDER_RULE if _LADDER.match(probe) else _DEFAULT_RULE


def choose(lm, tok, rows: list[dict]) -> tuple[list[int], list[list[float]]]:
    """Per row, the index of the choice whose `` <choice>\n`` continuation the model finds most
    likely (summed log-likelihood; ties go to the earliest choice), and every choice's summed
    NLL in nats. All rows' choices are scored in one batched ``lm.score`` call."""
    pairs, owner = [], []
    for i, r in enumerate(rows):
        prompt_ids = tok.encode(r["prompt"])
        for c in r["choices"]:
            pairs.append((prompt_ids, tok.encode(f" {c}\n")))
            owner.append(i)
    scored = lm.score(pairs)
    nll_RC: list[list[float]] = [[] for _ in rows]
    for i, cont in zip(owner, scored):
        nll_RC[i].append(cont.nll)
    # min() returns the first of equal values: the earliest choice wins a tie
    picked = [min(range(len(nll_C)), key=nll_C.__getitem__) for nll_C in nll_RC]
    return picked, nll_RC


def _check_choices(path: str, rows: list[dict]) -> None:
    for n, r in enumerate(rows, 1):
        c = r.get("choices")
        if (
            not isinstance(c, list)
            or not c
            or not all(isinstance(x, str) for x in c)
            or len(set(c)) != len(c)
        ):
            raise AblateError(
                f"{path}: row {n} ({r.get('id')}): 'choices' must be a non-empty list of "
                "distinct strings"
            )


class Probes(Task):
    name = "probes"
    version = 1

    def _files(self, ctx) -> dict[str, str]:
        files = {}
        for manifest in ctx.em.manifests:
            for probe, info in manifest.probes.items():
                files[probe] = os.path.join(manifest.root, info["path"])
        wanted = getattr(ctx.options, "probes", None)  # options built by hand may lack it
        if wanted:
            names = [n.strip() for n in wanted.split(",") if n.strip()]
            unknown = [n for n in names if n not in files]
            if unknown or not names:
                bad = unknown[0] if unknown else wanted
                raise AblateError(
                    f"probes: {bad!r} is not a probe file of this "
                    f"run's data (available: {', '.join(sorted(files)) or 'none'})"
                )
            files = {n: files[n] for n in names}
        return files

    def data_identity(self, ctx) -> dict:
        return {
            "files": {p: file_digest(f) for p, f in self._files(ctx).items()},
            "limit": ctx.options.limit,
        }

    def run(self, ctx) -> TaskResult:
        tok = ctx.em.tokenizer
        metrics, per_metric, details, total = {}, {}, [], 0
        ladders: dict[str, dict] = {}  # math_ladder / program_ladder -> pooled counts
        files = self._files(ctx)
        if not files:
            raise AblateError(
                f"{ctx.em.run_dir}: task probes: the run's manifests list no probes "
                "(only the toy world ships them)"
            )
        for probe, path in sorted(files.items()):
            rows = read_jsonl(path, ("prompt", "answer", "gold"), ctx.options.limit)
            stops, max_new, rule = rule_for(probe)
            outputs = ctx.lm.generate_text([r["prompt"] for r in rows], max_new, stops)
            correct = 0
            for r, out in zip(rows, outputs):
                predicted = rule(out)
                ok = predicted is not None and predicted == r["answer"]
                correct += ok
                details.append(
                    {
                        "probe": probe,
                        "id": r.get("id"),
                        "output": out,
                        "predicted": predicted,
                        "answer": r["answer"],
                        "correct": ok,
                    }
                )
            metrics[f"accuracy/{probe}"] = correct / len(rows)
            per_metric[f"accuracy/{probe}"] = len(rows)
            family = _LADDER.match(probe)
            if family:
                pooled = ladders.setdefault(
                    family.group(1), {"n": 0, "greedy": 0, "choice": 0, "choice_rows": 0}
                )
                pooled["n"] += len(rows)
                pooled["greedy"] += correct
            if any("choices" in r for r in rows):
                _check_choices(path, rows)
                picked, nll_RC = choose(ctx.lm, tok, rows)
                chosen_right = 0
                for r, j, d in zip(rows, picked, details[-len(rows) :]):
                    d["chosen"] = r["choices"][j]
                    d["choice_correct"] = r["choices"][j] == r["answer"]
                    chosen_right += d["choice_correct"]
                metrics[f"choice_accuracy/{probe}"] = chosen_right / len(rows)
                per_metric[f"choice_accuracy/{probe}"] = len(rows)
                if family:
                    pooled["choice"] += chosen_right
                    pooled["choice_rows"] += len(rows)
                # the gold continuation is `` <answer>\n``, one of the choices: its NLL is
                # already computed (same tokens, same context)
                gold_nll = [
                    nll_C[r["choices"].index(r["answer"])]
                    if r["answer"] in r["choices"] and r["gold"] == f" {r['answer']}\n"
                    else None
                    for r, nll_C in zip(rows, nll_RC)
                ]
            else:
                gold_nll = [None] * len(rows)
            golds = {"": [r["gold"] for r in rows]}
            for style in sorted({s for r in rows for s in r.get("solutions", {})}):
                golds[f"/{style}"] = [r["solutions"].get(style) for r in rows]
            for suffix, texts in golds.items():
                if suffix == "" and all(n is not None for n in gold_nll):
                    nll, count = sum(gold_nll), len(rows)
                else:
                    pairs = [
                        (tok.encode(r["prompt"]), tok.encode(t)) for r, t in zip(rows, texts) if t
                    ]
                    nll, count = sum(c.nll for c in ctx.lm.score(pairs)), len(pairs)
                nbytes = sum(len(t.encode("utf-8")) for t in texts if t)
                metrics[f"gold_bpb/{probe}{suffix}"] = nll / nbytes / math.log(2)
                per_metric[f"gold_bpb/{probe}{suffix}"] = count
            total += len(rows)
            choice_note = (
                f", choice accuracy {metrics[f'choice_accuracy/{probe}']:.3f}"
                if f"choice_accuracy/{probe}" in metrics
                else ""
            )
            ctx.progress(
                f"probes {probe}: accuracy {metrics[f'accuracy/{probe}']:.3f} "
                f"({correct}/{len(rows)}){choice_note}, gold bpb {metrics[f'gold_bpb/{probe}']:.3f}"
            )
        for family, pooled in sorted(ladders.items()):
            metrics[f"accuracy/{family}"] = pooled["greedy"] / pooled["n"]
            per_metric[f"accuracy/{family}"] = pooled["n"]
            if pooled["choice_rows"] == pooled["n"]:  # every rung had choices to score
                metrics[f"choice_accuracy/{family}"] = pooled["choice"] / pooled["n"]
                per_metric[f"choice_accuracy/{family}"] = pooled["n"]
        return TaskResult(
            metrics=metrics, samples=total, samples_by_metric=per_metric, details=details
        )
