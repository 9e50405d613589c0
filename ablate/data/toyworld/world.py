"""The toy world's content: a small fictional world and the arithmetic that runs through it.

Everything is drawn from one seeded ``random.Random``, so a seed fixes the world. The pieces are
shared on purpose: the same people, items and arithmetic chains appear in prose word problems,
in structured step-by-step solutions, in code that solves them, in plain programs and in
documented functions. That shared structure is what lets one domain help (or crowd out)
another in a mixture, which is the effect the ablations look for.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

NAMES = [
    "Ava",
    "Ben",
    "Cleo",
    "Dev",
    "Eli",
    "Fay",
    "Gus",
    "Hana",
    "Ivo",
    "Jade",
    "Kai",
    "Lea",
    "Milo",
    "Nia",
    "Omar",
    "Pia",
    "Quin",
    "Rosa",
    "Sami",
    "Tess",
    "Uma",
    "Vik",
    "Wren",
    "Yara",
]
PRONOUN = {
    n: (
        "she"
        if n
        in {
            "Ava",
            "Cleo",
            "Fay",
            "Hana",
            "Jade",
            "Lea",
            "Nia",
            "Pia",
            "Rosa",
            "Tess",
            "Uma",
            "Wren",
            "Yara",
        }
        else "he"
    )
    for n in NAMES
}
ITEMS = [
    "apples",
    "marbles",
    "coins",
    "books",
    "stamps",
    "shells",
    "pencils",
    "cards",
    "beads",
    "eggs",
    "stones",
    "tickets",
    "plums",
    "buttons",
    "kites",
    "cups",
]

# op -> (verbs used in prose, python operator, name of a helper function for Code-NL)
OPS = {
    "add": (["finds", "buys", "gets", "is given", "picks up", "wins"], "+", "add_more"),
    "sub": (["gives away", "eats", "loses", "sells", "drops", "trades away"], "-", "take_away"),
    "mul": (["doubles", "triples"], "*", "scale"),
}
_MUL_WORD = {2: "doubles", 3: "triples"}

_SYLLABLES = [
    "ka",
    "lo",
    "mi",
    "ra",
    "ve",
    "tor",
    "an",
    "sel",
    "bru",
    "qui",
    "zen",
    "dol",
    "fa",
    "gri",
    "hul",
    "nor",
    "pe",
    "su",
    "tha",
    "wy",
    "xo",
    "ly",
    "mar",
    "ost",
]
ATTRIBUTES = ["capital", "river", "animal", "color"]
_ANIMALS = [
    "goats",
    "owls",
    "foxes",
    "otters",
    "cranes",
    "bees",
    "horses",
    "crabs",
    "seals",
    "moths",
]
_COLORS = ["red", "green", "blue", "gold", "white", "black", "violet", "orange", "grey", "teal"]


@dataclass(frozen=True)
class Step:
    op: str  # add | sub | mul
    amount: int
    verb: str


@dataclass(frozen=True)
class Problem:
    """A word problem: someone starts with ``start`` items and applies ``steps`` in order."""

    name: str
    item: str
    start: int
    steps: tuple[Step, ...]

    @property
    def values(self) -> list[int]:
        """The running total after each step (the intermediate results a solution shows)."""
        out, v = [], self.start
        for s in self.steps:
            v = apply(s.op, v, s.amount)
            out.append(v)
        return out

    @property
    def answer(self) -> int:
        return self.values[-1]


def apply(op: str, value: int, amount: int) -> int:
    return value + amount if op == "add" else value - amount if op == "sub" else value * amount


def sample_problem(
    rng: random.Random,
    max_operand: int,
    max_steps: int,
    max_value: int = 99,
    steps: int | None = None,
) -> Problem:
    """A problem whose running totals stay within 0..max_value (no negatives, two digits).

    ``steps=None``: 1..max_steps operations (a chain cut short when no operation fits). ``steps=k``:
    exactly k operations, whatever ``max_steps`` says (the difficulty ladder probes chains longer
    than training's); a chain that cannot be continued is drawn again. ``None`` draws exactly the
    random numbers it always did, so existing worlds stay byte-identical."""
    while True:
        start = rng.randint(2, max_operand)
        chain, value = [], start
        for _ in range(rng.randint(1, max_steps) if steps is None else steps):
            for _try in range(10):  # redraw a step that would leave the range
                op = rng.choice(("add", "add", "sub", "sub", "mul"))
                amount = rng.randint(2, 3) if op == "mul" else rng.randint(1, max_operand)
                if 0 <= apply(op, value, amount) <= max_value:
                    break
            else:
                break
            verb = _MUL_WORD[amount] if op == "mul" else rng.choice(OPS[op][0])
            chain.append(Step(op, amount, verb))
            value = apply(op, value, amount)
        if chain and (steps is None or len(chain) == steps):
            return Problem(rng.choice(NAMES), rng.choice(ITEMS), start, tuple(chain))


def answer_choices(p: Problem, max_value: int, rng: random.Random, count: int = 10) -> list[str]:
    """``count`` distinct candidate answers, ``p.answer`` among them, in a shuffled order.

    The distractors are the mistakes a model plausibly makes: stopping early (the start and the
    intermediate totals), an off-by-a-little result (answer +-1, +-2, +-each operand), and
    failing those, any other value in 0..max_value (then above it, for tiny worlds)."""
    answer = p.answer
    near = {answer + d for d in (1, -1, 2, -2)}
    near |= {answer + sign * s.amount for s in p.steps for sign in (1, -1)}
    plausible = sorted(({p.start, *p.values} | near) - {answer})
    picked = [v for v in plausible if v >= 0]
    picked = rng.sample(picked, min(count - 1, len(picked)))
    if len(picked) < count - 1:
        taken = set(picked) | {answer}
        rest = [v for v in range(max_value + 1) if v not in taken]
        picked += rng.sample(rest, min(count - 1 - len(picked), len(rest)))
        beyond = max(max_value, *picked, answer) + 1  # a tiny world has too few values
        while len(picked) < count - 1:
            picked.append(beyond)
            beyond += 1
    choices = [str(v) for v in picked + [answer]]
    rng.shuffle(choices)
    return choices


@dataclass(frozen=True)
class Entity:
    """A fictional country with four facts; general text states them, probes ask for them."""

    name: str
    facts: dict  # attribute -> value


def make_entities(rng: random.Random, count: int) -> list[Entity]:
    def word(n: int) -> str:
        return "".join(rng.choice(_SYLLABLES) for _ in range(n)).capitalize()

    names: set[str] = set()
    entities = []
    while len(entities) < count:
        name = word(rng.randint(2, 3))
        if name in names:
            continue
        names.add(name)
        entities.append(
            Entity(
                name,
                {
                    "capital": word(2),
                    "river": word(2) + " River",
                    "animal": rng.choice(_ANIMALS),
                    "color": rng.choice(_COLORS),
                },
            )
        )
    return entities


# How general text states each fact; the first template of each is also the probe's prompt,
# so recall is tested in a phrasing the model has seen, about a fact it has seen.
FACT_TEMPLATES = {
    "capital": [
        "The capital of {e} is {v}.",
        "{v} is the capital city of {e}.",
        "In {e}, the seat of government is {v}.",
    ],
    "river": [
        "The longest river of {e} is the {v}.",
        "The {v} flows through {e}.",
        "{e} is crossed by the {v}.",
    ],
    "animal": [
        "The national animal of {e} is {v}.",
        "People in {e} keep {v}.",
        "Herds of {v} are common in {e}.",
    ],
    "color": [
        "The flag of {e} is {v}.",
        "{e} flies a {v} flag.",
        "The colour of the flag of {e} is {v}.",
    ],
}
FILLER = [
    "It is a quiet place.",
    "Travellers often pass through it.",
    "Its markets are busy in spring.",
    "Winters there are long.",
    "Many stories are told about it.",
    "Its roads are old and narrow.",
]
