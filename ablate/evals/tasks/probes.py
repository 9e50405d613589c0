"""Toy-world probes: held-out questions whose answers the world determines.

For each probe file the manifest lists (``math_answer``, ``program_output``, ``fact_recall``):

* ``accuracy/<probe>``: greedy generation from the prompt, the answer read off by the probe's
  rule, exact match with the world's answer;
* ``gold_bpb/<probe>``: bits per byte of the gold continuation given the prompt (continuous:
  moves long before accuracy does), and for math, per solution style
  (``gold_bpb/math_answer/math.structured`` ...): which written form of the reasoning the model
  finds likely.
"""

from __future__ import annotations

import math
import os
import re

from ablate.errors import AblateError
from ablate.evals.tasks.base import Task, TaskResult, file_digest, read_jsonl

_NUMBER = re.compile(r"-?\d+")


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


# probe -> (stop strings, max new tokens, answer rule)
RULES = {
    "math_answer": (("\n\n", "Question:"), 160, _math_answer),
    "program_output": (("\n",), 8, _program_output),
    "fact_recall": (("\n", "."), 24, _fact),
}


class Probes(Task):
    name = "probes"
    version = 1

    def _files(self, ctx) -> dict[str, str]:
        files = {}
        for manifest in ctx.em.manifests:
            for probe, info in manifest.probes.items():
                files[probe] = os.path.join(manifest.root, info["path"])
        return files

    def data_identity(self, ctx) -> dict:
        return {
            "files": {p: file_digest(f) for p, f in self._files(ctx).items()},
            "limit": ctx.options.limit,
        }

    def run(self, ctx) -> TaskResult:
        tok = ctx.em.tokenizer
        metrics, per_metric, details, total = {}, {}, [], 0
        files = self._files(ctx)
        if not files:
            raise AblateError(
                f"{ctx.em.run_dir}: task probes: the run's manifests list no probes "
                "(only the toy world ships them)"
            )
        for probe, path in sorted(files.items()):
            rows = read_jsonl(path, ("prompt", "answer", "gold"), ctx.options.limit)
            stops, max_new, rule = RULES.get(probe, (("\n",), 32, lambda t: t.strip() or None))
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
            golds = {"": [r["gold"] for r in rows]}
            for style in sorted({s for r in rows for s in r.get("solutions", {})}):
                golds[f"/{style}"] = [r["solutions"].get(style) for r in rows]
            for suffix, texts in golds.items():
                pairs = [(tok.encode(r["prompt"]), tok.encode(t)) for r, t in zip(rows, texts) if t]
                scored = ctx.lm.score(pairs)
                nbytes = sum(len(t.encode("utf-8")) for t in texts if t)
                metrics[f"gold_bpb/{probe}{suffix}"] = (
                    sum(c.nll for c in scored) / nbytes / math.log(2)
                )
                per_metric[f"gold_bpb/{probe}{suffix}"] = len(pairs)
            total += len(rows)
            ctx.progress(
                f"probes {probe}: accuracy {metrics[f'accuracy/{probe}']:.3f} "
                f"({correct}/{len(rows)}), gold bpb {metrics[f'gold_bpb/{probe}']:.3f}"
            )
        return TaskResult(
            metrics=metrics, samples=total, samples_by_metric=per_metric, details=details
        )
