"""The toy world: six domain-tagged synthetic corpora plus held-out capability probes.

Small enough that a model of a few million parameters learns it in minutes on two CPU cores,
structured enough that mixtures interact (see ``world.py``). Scale knobs (``options:`` of a
``reader: toyworld`` source in a corpora YAML; the built-in ``toyworld`` spec uses defaults):

==================== ======= ==============================================================
knob                 default what it trades
==================== ======= ==============================================================
documents_per_domain 20000   data per domain (~4 MB each); more = more tokens before repeats
domain_documents     {}      per-domain override, e.g. {math.structured: 8000}
entities             12      fictional countries (4 facts each): more = harder recall
max_operand          9       largest number in a problem: larger = harder arithmetic
max_steps            2       most operations per problem: more = longer reasoning chains
max_value            20      largest running total: larger = more arithmetic facts to learn
probes_per_task      200     held-out probes per capability: more = tighter confidence intervals
ladder               []      step counts of the difficulty-ladder probes, e.g. [1, 2, 3] (each
                             1..20, may exceed max_steps: longer chains than training has)
seed                 spec's  the world itself (names, facts, problems)
==================== ======= ==============================================================

Probes (``DIR/probes/<task>.jsonl``, one JSON object per line with ``id``, ``prompt``,
``answer`` and ``gold``, the gold continuation whose likelihood is scored):

* ``math_answer``: unseen word problems; ``solutions`` holds the gold solution in each math style.
* ``program_output``: unseen programs cut at ``assert <var> == ``; the answer is the value.
* ``fact_recall``: every fact of the world, asked in a phrasing seen in training.

With ``ladder: [k, ...]``, per rung k (``probes_per_task`` each, with ``steps`` = k and
``choices``, 10 distinct candidate answers as strings, the answer among them, for scoring by
likelihood with chance at 10%):

* ``math_ladder_<k>``: unseen k-step word problems in the neutral ``Q: <story>`` / ``A:`` frame,
  gold `` <answer>\n``; no solution styles (none is in this frame).
* ``program_ladder_<k>``: unseen k-assignment chains, ``Q: <program>`` / ``What is <var>?`` /
  ``A:``, gold `` <value>\n``.

Each rung draws from its own stream (the seed and k), so a rung's probes do not depend on which
other rungs are listed, and listing none leaves the world byte-identical. Training avoids the
rungs' questions and (in code.exec's chain form) their programs, as it avoids the other probes.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field, fields

from ablate.data.corpora import Source
from ablate.data.rawfiles import Materialized, write_jsonl
from ablate.data.toyworld import render
from ablate.data.toyworld.world import ATTRIBUTES, answer_choices, make_entities, sample_problem
from ablate.errors import AblateError, show

DOMAINS = ("code.exec", "code.nl", "math.text", "math.structured", "math.code", "general")
_MIX = 0x9E3779B9  # decorrelates the probe stream from the training stream of the same seed
LADDER_MAX_STEPS = 20  # a rung's chain names k + 1 variables out of render's 22


# Bounds that keep a typo from starting a generation that never ends (2**70 documents) or a
# world too large for a disk: 10M documents of ~200 bytes is ~2 GB per domain.
_UPPER_BOUNDS = {
    "documents_per_domain": 10_000_000,
    "entities": 100_000,
    "max_operand": 1_000_000,
    "max_steps": 20,
    "max_value": 1_000_000_000,
    "probes_per_task": 100_000,
}
# Consecutive repeats after which the probe sampler concludes the world has no more distinct
# problems (small max_operand/max_steps) rather than looping for ever.
_MAX_REPEATS = 10_000


@dataclass
class ToyWorldConfig:
    seed: int = 1234
    documents_per_domain: int = 20000
    domain_documents: dict = field(default_factory=dict)
    entities: int = 12
    max_operand: int = 9
    max_steps: int = 2
    max_value: int = 20
    probes_per_task: int = 200
    ladder: list = field(default_factory=list)
    where: str = "toyworld"  # where the options came from, for messages

    def __post_init__(self):
        for f, most in _UPPER_BOUNDS.items():
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= most:
                raise AblateError(
                    f"{self.where}.{f}: {show(v)} must be an integer in [1, {most:,}]"
                )
        for d, n in self.domain_documents.items():
            if d not in DOMAINS:
                raise AblateError(
                    f"{self.where}.domain_documents: {show(d)} is not a toy-world domain "
                    f"(allowed: {', '.join(DOMAINS)})"
                )
            most = _UPPER_BOUNDS["documents_per_domain"]
            if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= most:
                raise AblateError(
                    f"{self.where}.domain_documents.{d}: {show(n)} must be an integer in "
                    f"[0, {most:,}]"
                )
        ladder = self.ladder
        if (
            not isinstance(ladder, (list, tuple))
            or any(isinstance(k, bool) or not isinstance(k, int) for k in ladder)
            or any(not 1 <= k <= LADDER_MAX_STEPS for k in ladder)
            or len(set(ladder)) != len(ladder)
        ):
            raise AblateError(
                f"{self.where}.ladder: {show(ladder)} must be a list of distinct integers in "
                f"[1, {LADDER_MAX_STEPS}] (the step counts of the ladder's rungs, e.g. [1, 2, 3])"
            )
        if self.max_operand < 2:
            raise AblateError(f"{self.where}.max_operand: must be at least 2")
        if self.max_value < 2 * self.max_operand:
            raise AblateError(
                f"{self.where}.max_value: must be at least 2 x max_operand ({2 * self.max_operand})"
            )

    def documents(self, domain: str) -> int:
        return self.domain_documents.get(domain, self.documents_per_domain)


def generate(cfg: ToyWorldConfig) -> tuple[list[dict], dict[str, list[dict]]]:
    """(training rows with text and domain, probes per task). Deterministic in ``cfg``."""
    rng = random.Random(cfg.seed)
    entities = make_entities(rng, cfg.entities)

    # Probes first, from their own stream, so training can steer clear of them.
    prng = random.Random(cfg.seed ^ _MIX)
    math_probes, held_questions, repeats = [], set(), 0
    while len(math_probes) < cfg.probes_per_task:
        p = sample_problem(prng, cfg.max_operand, cfg.max_steps, cfg.max_value)
        q = render.question(p)
        if q in held_questions:
            repeats += 1
            if repeats > _MAX_REPEATS:
                raise AblateError(
                    f"{cfg.where}.probes_per_task: {cfg.probes_per_task} distinct math problems "
                    f"do not exist with max_operand {cfg.max_operand} and max_steps "
                    f"{cfg.max_steps} (found {len(held_questions)}; lower it or raise those)"
                )
            continue
        repeats = 0
        held_questions.add(q)
        sols = {d: r(p) for d, r in render.MATH_RENDERERS.items()}
        math_probes.append(
            {
                "id": f"math-{len(math_probes)}",
                "prompt": q,
                "answer": str(p.answer),
                "gold": sols["math.structured"],
                "solutions": sols,
            }
        )
    program_probes, held_programs, repeats = [], set(), 0
    while len(program_probes) < cfg.probes_per_task:
        prompt, answer = render.program(
            sample_problem(prng, cfg.max_operand, cfg.max_steps, cfg.max_value), prng, cfg.max_value
        )
        if prompt in held_programs:
            repeats += 1
            if repeats > _MAX_REPEATS:
                raise AblateError(
                    f"{cfg.where}.probes_per_task: {cfg.probes_per_task} distinct programs do "
                    f"not exist with max_operand {cfg.max_operand} and max_steps {cfg.max_steps} "
                    f"(found {len(held_programs)}; lower it or raise those)"
                )
            continue
        repeats = 0
        held_programs.add(prompt)
        program_probes.append(
            {
                "id": f"program-{len(program_probes)}",
                "prompt": prompt,
                "answer": answer,
                "gold": answer,
            }
        )
    fact_probes = []
    for e in entities:
        for a in ATTRIBUTES:
            prompt, answer = render.fact_probe(e, a)
            fact_probes.append(
                {
                    "id": f"fact-{e.name}-{a}",
                    "prompt": prompt,
                    "answer": answer.strip(),
                    "gold": answer,
                }
            )

    ladder_probes: dict[str, list[dict]] = {}
    for k in cfg.ladder:
        rung = _ladder_rung(cfg, k)
        held_questions |= rung.pop("questions")
        held_programs |= rung.pop("programs")
        ladder_probes.update(rung)

    def held_out_everything(what: str) -> AblateError:
        # a tiny world whose probes (a ladder rung included) hold out every problem training
        # could draw would otherwise loop for ever; counting rejections draws nothing
        return AblateError(
            f"{cfg.where}: the probes hold out every {what} training can draw with max_operand "
            f"{cfg.max_operand}, max_steps {cfg.max_steps} and max_value {cfg.max_value} "
            "(lower probes_per_task or the ladder's rungs, or raise those)"
        )

    def fresh_problem():
        for _ in range(_MAX_REPEATS):
            p = sample_problem(rng, cfg.max_operand, cfg.max_steps, cfg.max_value)
            if render.question(p) not in held_questions:
                return p
        raise held_out_everything("word problem")

    rows: list[dict] = []
    for domain in DOMAINS:
        for _ in range(cfg.documents(domain)):
            if domain in render.MATH_RENDERERS:
                p = fresh_problem()
                text = render.question(p) + render.MATH_RENDERERS[domain](p)
            elif domain == "code.exec":
                for _ in range(_MAX_REPEATS):
                    prompt, answer = render.program(fresh_problem(), rng, cfg.max_value)
                    if prompt not in held_programs:
                        break
                else:
                    raise held_out_everything("program")
                text = prompt + answer + "\n"
            elif domain == "code.nl":
                text = render.documented_function(fresh_problem(), rng)
            else:
                text = render.general_text(rng.choice(entities), rng)
            rows.append({"text": text, "domain": domain})
    return rows, {
        "math_answer": math_probes,
        "program_output": program_probes,
        "fact_recall": fact_probes,
        **ladder_probes,
    }


def _ladder_rung(cfg: ToyWorldConfig, k: int) -> dict:
    """Rung ``k``'s probes (``math_ladder_<k>``, ``program_ladder_<k>``) and what training must
    avoid (``questions``: the word problems' ``Question:`` lines, ``programs``: code.exec's form
    of each chain). Its own stream: the seed and k, nothing else, decide it."""
    rng = random.Random(f"toyworld-ladder/{cfg.seed}/{k}")

    def distinct(render_one, what: str) -> list[tuple]:
        made, seen, repeats = [], set(), 0
        while len(made) < cfg.probes_per_task:
            p = sample_problem(rng, cfg.max_operand, cfg.max_steps, cfg.max_value, steps=k)
            out = render_one(p)
            if out[0] in seen:
                repeats += 1
                if repeats > _MAX_REPEATS:
                    raise AblateError(
                        f"{cfg.where}.ladder: {cfg.probes_per_task} distinct {k}-step {what} do "
                        f"not exist with max_operand {cfg.max_operand} and max_value "
                        f"{cfg.max_value} (found {len(seen)}; lower probes_per_task or raise those)"
                    )
                continue
            repeats = 0
            seen.add(out[0])
            # each probe's distractors from its own stream, seeded from the rung's: how they are
            # drawn does not move the problems
            choices = answer_choices(p, cfg.max_value, random.Random(rng.getrandbits(64)))
            made.append((p, out, choices))
        return made

    def record(task: str, i: int, p, prompt: str, gold: str, choices: list[str]) -> dict:
        return {
            "id": f"{task}-{i}",
            "prompt": prompt,
            "answer": str(p.answer),
            "gold": gold,
            "steps": k,
            "choices": choices,
        }

    maths = distinct(lambda p: (*render.neutral_question(p), render.question(p)), "problems")
    programs = distinct(lambda p: render.neutral_program(p, rng), "programs")
    m_task, p_task = f"math_ladder_{k}", f"program_ladder_{k}"
    return {
        m_task: [record(m_task, i, p, o[0], o[1], c) for i, (p, o, c) in enumerate(maths)],
        p_task: [record(p_task, i, p, o[0], o[1], c) for i, (p, o, c) in enumerate(programs)],
        "questions": {o[2] for _, o, _ in maths},
        "programs": {o[2] for _, o, _ in programs},
    }


_CAPABILITY = {"math_answer": "math", "program_output": "code", "fact_recall": "knowledge"}
_LADDER_CAPABILITY = {"math_ladder_": "math", "program_ladder_": "code"}


def capability(task: str) -> str:
    """The capability a probe file measures (``math_ladder_3`` -> math)."""
    if task in _CAPABILITY:
        return _CAPABILITY[task]
    return next(c for prefix, c in _LADDER_CAPABILITY.items() if task.startswith(prefix))


def materialize_toyworld(source: Source, raw_dir: str, seed: int) -> Materialized:
    known = {f.name for f in fields(ToyWorldConfig)} - {"where"}
    for key in source.options:
        if key not in known:
            raise AblateError(
                f"{source.where}.options: unknown key {key!r} (allowed: {', '.join(sorted(known))})"
            )
    cfg = ToyWorldConfig(**{"seed": seed, **source.options, "where": f"{source.where}.options"})
    rows, probes = generate(cfg)
    out = os.path.join(raw_dir, f"{source.name}.jsonl")
    write_jsonl(out, rows)
    probe_dir = os.path.join(os.path.dirname(raw_dir), "probes")
    os.makedirs(probe_dir, exist_ok=True)
    made = {}
    for task, records in probes.items():
        path = os.path.join(probe_dir, f"{task}.jsonl")
        made[task] = {
            "path": path,
            "count": write_jsonl(path, records),
            "capability": capability(task),
        }
    return Materialized([out], made)
