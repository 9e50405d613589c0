"""How the toy world's content is written in each of the six domains.

One ``Problem`` renders as a prose solution (math.text), explicit steps (math.structured) or
code paired with each reasoning step (math.code); its arithmetic also appears, without the
story, in plain programs (code.exec) and in documented functions with doctests (code.nl).
All math formats begin with the same ``Question: ...`` line, so a probe's prompt is format
neutral and the model answers in whatever style its training mix taught it.

The difficulty-ladder probes use a frame no training domain writes verbatim, ``Q: ...`` then
``A:`` and the bare answer (``neutral_question``, ``neutral_program``): a model that never saw
one solution style is not penalised for the style, only for not knowing the number.
"""

from __future__ import annotations

import random

from ablate.data.toyworld.world import FACT_TEMPLATES, FILLER, OPS, PRONOUN, Entity, Problem, apply

_GERUND = {
    "finds": "finding",
    "buys": "buying",
    "gets": "getting",
    "is given": "being given",
    "picks up": "picking up",
    "wins": "winning",
    "gives away": "giving away",
    "eats": "eating",
    "loses": "losing",
    "sells": "selling",
    "drops": "dropping",
    "trades away": "trading away",
    "doubles": "doubling",
    "triples": "tripling",
}
_VARS = "abcdefghkmnpqrstuvwxyz"


def question(p: Problem) -> str:
    pron = PRONOUN[p.name]
    sentences = [f"{p.name} has {p.start} {p.item}."]
    for i, s in enumerate(p.steps):
        lead = pron.capitalize() if i == 0 else f"Then {pron}"
        obj = f"the {p.item}" if s.op == "mul" else f"{s.amount} {p.item}"
        sentences.append(f"{lead} {s.verb} {obj}.")
    sentences.append(f"How many {p.item} does {p.name} have now?")
    return "Question: " + " ".join(sentences) + "\n"


def solution_text(p: Problem) -> str:
    pron = PRONOUN[p.name]
    parts = [f"{p.name} starts with {p.start} {p.item}."]
    for s, v in zip(p.steps, p.values):
        what = "them" if s.op == "mul" else str(s.amount)
        parts.append(f"After {_GERUND[s.verb]} {what}, {pron} has {v}.")
    parts.append(f"The answer is {p.answer}.")
    return " ".join(parts) + "\n"


def solution_structured(p: Problem) -> str:
    lines, v = [], p.start
    for i, (s, new) in enumerate(zip(p.steps, p.values), 1):
        lines.append(f"Step {i}: {v} {OPS[s.op][1]} {s.amount} = {new}")
        v = new
    lines.append(f"Answer: {p.answer}")
    return "\n".join(lines) + "\n"


def solution_code(p: Problem) -> str:
    var, pron = p.item, PRONOUN[p.name]
    lines = [f"{var} = {p.start}"]
    for s, v in zip(p.steps, p.values):
        what = "them" if s.op == "mul" else str(s.amount)
        lines.append(f"{var} = {var} {OPS[s.op][1]} {s.amount}  # {pron} {s.verb} {what}: {v}")
    lines += [f"print({var})", f"Answer: {p.answer}"]
    return "\n".join(lines) + "\n"


MATH_RENDERERS = {
    "math.text": solution_text,
    "math.structured": solution_structured,
    "math.code": solution_code,
}


def program(p: Problem, rng: random.Random, max_value: int = 99) -> tuple[str, str]:
    """A plain program computing ``p``'s arithmetic, as (text up to the asserted value, value)."""
    form = rng.choice(("chain", "chain", "loop", "function"))
    if form == "loop" and any(s.op != "add" for s in p.steps[:1]):
        form = "chain"
    if form == "chain":
        names = rng.sample(_VARS, len(p.steps) + 1)
        body, result = _chain(p, names), names[-1]
    elif form == "loop":
        # repeated addition: the same arithmetic as multiplication, written as a loop
        amount = p.steps[0].amount
        times = max(1, min(4, (max_value - p.start) // max(1, amount)))
        body = f"total = {p.start}\nfor _ in range({times}):\n    total = total + {amount}"
        return body + "\nassert total == ", str(p.start + times * amount)
    else:
        expr = "x"
        for s in p.steps:
            if s.op == "mul" and expr != "x":
                expr = f"({expr})"
            expr = f"{expr} {OPS[s.op][1]} {s.amount}"
        fname = rng.choice(("f", "g", "step", "update", "compute"))
        body, result = f"def {fname}(x):\n    return {expr}\n\ny = {fname}({p.start})", "y"
    return f"{body}\nassert {result} == ", str(p.answer)


def _chain(p: Problem, names: list[str]) -> str:
    """``p`` as one assignment per line: the start, then one line per step."""
    lines = [f"{names[0]} = {p.start}"]
    for i, s in enumerate(p.steps):
        lines.append(f"{names[i + 1]} = {names[i]} {OPS[s.op][1]} {s.amount}")
    return "\n".join(lines)


def neutral_question(p: Problem) -> tuple[str, str]:
    """(prompt, gold): the story of ``question`` in the ``Q:``/``A:`` frame, the bare answer."""
    story = question(p).removeprefix("Question: ")
    return f"Q: {story}A:", f" {p.answer}\n"


def neutral_program(p: Problem, rng: random.Random) -> tuple[str, str, str]:
    """(prompt, gold, training form): ``p`` as a chain of assignments, exactly one line per step,
    asked for in the ``Q:``/``A:`` frame; the training form is the text code.exec would write
    for the same chain (``... assert <var> == ``), which training then steers clear of."""
    if len(p.steps) + 1 > len(_VARS):
        raise ValueError(f"a chain of {len(p.steps)} steps needs more than {len(_VARS)} names")
    names = rng.sample(_VARS, len(p.steps) + 1)
    body = _chain(p, names)
    return (
        f"Q: {body}\nWhat is {names[-1]}?\nA:",
        f" {p.answer}\n",
        f"{body}\nassert {names[-1]} == ",
    )


def documented_function(p: Problem, rng: random.Random) -> str:
    """A helper with a prose docstring and doctests: code interleaved with natural language."""
    s = rng.choice(p.steps)
    name, item = OPS[s.op][2], p.item
    doc = {
        "add": f"Return how many {item} there are after "
        f"{_GERUND[rng.choice(OPS['add'][0])]} n more.",
        "sub": f"Return how many {item} are left after "
        f"{_GERUND[rng.choice(OPS['sub'][0])]} n of them.",
        "mul": f"Return the number of {item} after multiplying them by n.",
    }[s.op]
    examples = []
    for v, st in zip([p.start] + p.values, p.steps):
        if st.op == s.op:
            examples.append(f"    >>> {name}({v}, {st.amount})\n    {apply(st.op, v, st.amount)}")
    return (
        f'def {name}({item}, n):\n    """{doc}\n\n'
        + "\n".join(examples)
        + f'\n    """\n    return {item} {OPS[s.op][1]} n\n'
    )


def fact_sentence(e: Entity, attribute: str, rng: random.Random) -> str:
    return rng.choice(FACT_TEMPLATES[attribute]).format(e=e.name, v=e.facts[attribute])


def general_text(e: Entity, rng: random.Random) -> str:
    attrs = rng.sample(list(e.facts), rng.randint(2, 4))
    sentences = [fact_sentence(e, a, rng) for a in attrs] + rng.sample(FILLER, rng.randint(0, 2))
    rng.shuffle(sentences)
    return " ".join(sentences) + "\n"


def fact_probe(e: Entity, attribute: str) -> tuple[str, str]:
    """(prompt, answer): the first template, cut where the value starts."""
    template = FACT_TEMPLATES[attribute][0]
    head = template[: template.index("{v}")].format(e=e.name)
    return head.rstrip(), " " + e.facts[attribute]
