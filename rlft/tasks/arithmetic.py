"""The built-in task: deterministic arithmetic word problems with N-CoT and P-CoT annotations.

This is the embedded default (``ARCHITECTURE.md`` §5): demos and tests train on it with nothing
downloaded. Each problem is a short story (shopping, sharing, machines, travel, savings, packing,
comparisons, reading, splitting a bill) solved in 2-4 steps. Every step is one binary operation, so the
N-CoT is one short sentence per step with the computed result (``The pens cost 4 * 12 = 48
dollars.``) and the P-CoT is one assignment per step, both rendered from the same step list.

How hard it is, by ``difficulty`` (1 is the demo setting):

| difficulty | steps | factors | counts | amounts |
|---|---|---|---|---|
| 0 | 2 | 2-5 | 2-20 | 10-99 |
| 1 | 2-3 | 2-9 | 10-99 | 100-999 |
| 2 | 2-4 | 2-19 | 10-999 | 100-9,999 |
| 3 | 3-4 | 2-29 | 10-9,999 | 100-99,999 |

At difficulty 1 the answers need 2-digit x 1-digit products and sums of 3-digit numbers, which a
tiny model gets wrong often but can learn; with one token per digit a CoT stays under about 100
tokens. Division always comes out exact and every intermediate value is a positive integer.

Determinism: everything is drawn from one `random.Random` seeded by the arguments (never the global
`random`, never `hash()`), so the same arguments give identical records in any process.
"""

from __future__ import annotations

import random
import re

from rlft.tasks.base import Record

_PEOPLE = (
    ("Tom", "he"), ("Anna", "she"), ("Ben", "he"), ("Mia", "she"), ("Sam", "he"), ("Lily", "she"),
    ("Leo", "he"), ("Emma", "she"), ("Max", "he"), ("Zoe", "she"), ("Omar", "he"), ("Nora", "she"),
    ("Raj", "he"), ("Ivy", "she"), ("Paul", "he"), ("Sara", "she"), ("Dan", "he"), ("Kim", "she"),
)  # fmt: skip
_ITEMS = ("pencils", "stickers", "marbles", "apples", "cards", "shells", "cookies", "beads", "stamps", "coins")
_GOODS = ("notebooks", "pens", "mugs", "candles", "shirts", "plants", "kites", "lamps", "bowls", "hats")
_MACHINES = (  # (noun, verb 3rd person, verb base, product)
    ("machine", "makes", "make", "toys"), ("printer", "prints", "print", "posters"),
    ("bakery", "bakes", "bake", "rolls"), ("robot", "paints", "paint", "cups"), ("loom", "weaves", "weave", "scarves"),
)  # fmt: skip
_FARMS = (  # (worker, verb, container, product, packs)
    ("baker", "bakes", "trays", "cookies", "bags"), ("farmer", "picks", "crates", "apples", "boxes"),
    ("gardener", "grows", "rows", "tulips", "bunches"), ("chef", "makes", "plates", "dumplings", "boxes"),
)  # fmt: skip
_VEHICLES = ("car", "train", "bus", "truck", "boat")
_TRIPS = ("taxi ride", "boat trip", "cabin", "pizza order", "tennis court")
_GIFTS = ("bike", "guitar", "camera", "tent", "watch")
_OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b, "/": lambda a, b: a // b}
_PYOP = {"+": "+", "-": "-", "*": "*", "/": "//"}  # the program divides exactly, so // returns an int


class _Reject(Exception):
    """The draw gave a non-positive or inexact step; the generator draws again."""


class _Problem:
    """A problem built step by step: question sentences, N-CoT sentences and program lines."""

    def __init__(self) -> None:
        self.sentences: list[str] = []
        self.cot: list[str] = []
        self.code: list[str] = []
        self.values: dict[str, int] = {}
        self.last = ""
        self.steps: list[tuple[str, str | int, str, str | int, str]] = []  # (var, left, op, right, sentence)

    def say(self, sentence: str) -> None:
        self.sentences.append(sentence)

    def given(self, var: str, value: int) -> int:
        """A number stated in the question; becomes ``var = value`` in the program."""
        assert var not in self.values, var
        self.values[var] = value
        self.code.append(f"{var} = {value}")
        return value

    def step(self, var: str, left: str | int, op: str, right: str | int, sentence: str) -> int:
        """One operation; `sentence` has a ``#`` where ``a op b = c`` goes. Operands are variables or literals."""
        assert var not in self.values, var
        a, b = (self.values[x] if isinstance(x, str) else x for x in (left, right))
        if op == "/" and (b == 0 or a % b):
            raise _Reject
        c = _OPS[op](a, b)
        if c <= 0:
            raise _Reject
        self.values[var] = c
        self.last = var
        self.steps.append((var, left, op, right, sentence))
        self.code.append(f"{var} = {left} {_PYOP[op]} {right}")
        self.cot.append(sentence.replace("#", f"{a} {op} {b} = {c}"))
        return c


def _factor(rng: random.Random, d: int) -> int:
    return rng.randint(2, 5 if d == 0 else 9 if d == 1 else 10 * d - 1)


def _count(rng: random.Random, d: int) -> int:
    return rng.randint(2, 20) if d == 0 else rng.randint(10, 10 ** (d + 1) - 1)


def _amount(rng: random.Random, d: int) -> int:
    return rng.randint(10, 99) if d == 0 else rng.randint(100, 10 ** (d + 2) - 1)


def _round_up(rng: random.Random, value: int, unit: int = 100) -> int:
    """A round number above `value` (a bill paid, a trip length, a price)."""
    return (value // unit + rng.randint(1, 4)) * unit


def _person(name_he: tuple[str, str]) -> dict[str, str]:
    name, he = name_he
    his = "his" if he == "he" else "her"
    return {"name": name, "he": he, "He": he.capitalize(), "His": his.capitalize(),
            "self": "himself" if he == "he" else "herself"}  # fmt: skip


def _shopping(p: _Problem, rng: random.Random, d: int, steps: int) -> None:
    who = _person(rng.choice(_PEOPLE))
    goods, other = rng.sample(_GOODS, 2)
    one, two = goods[:-1], other[:-1]
    n, price = p.given(goods, _factor(rng, d)), p.given(f"{one}_price", _count(rng, d))
    p.say(f"{who['name']} buys {n} {goods} for ${price} each.")
    cost = p.step(f"{goods}_cost", goods, "*", f"{one}_price", f"The {goods} cost # dollars.")
    if steps >= 3:
        if steps == 4:
            m, q = p.given(other, _factor(rng, d)), p.given(f"{two}_price", _count(rng, d))
            p.say(f"{who['He']} also buys {m} {other} for ${q} each.")
            p.step(f"{other}_cost", other, "*", f"{two}_price", f"The {other} cost # dollars.")
            extra = f"{other}_cost"
        else:
            q = p.given(f"{two}_price", _amount(rng, d))
            p.say(f"{who['He']} also buys a {two} for ${q}.")
            extra = f"{two}_price"
        cost = p.step("total_cost", f"{goods}_cost", "+", extra, f"{who['He']} spends # dollars in total.")
    paid = p.given("paid", _round_up(rng, cost))
    p.say(f"{who['He']} pays with ${paid}. How much change does {who['he']} get?")
    p.step("change", "paid", "-", p.last, f"{who['He']} gets # dollars in change.")


def _sharing(p: _Problem, rng: random.Random, d: int, steps: int) -> None:
    who, friend = (_person(x) for x in rng.sample(_PEOPLE, 2))
    items = rng.choice(_ITEMS)
    k = _factor(rng, d)
    a = p.given(items, _count(rng, d))
    p.say(f"{who['name']} has {a} {items}.")
    if steps == 4:
        b, c = p.given("packs", _factor(rng, d)), p.given("per_pack", _count(rng, d))
        p.say(f"{who['He']} buys {b} packs of {c} {items}.")
        p.step("bought", "packs", "*", "per_pack", f"{who['He']} buys # {items}.")
    else:
        b = _count(rng, d)
        if steps == 2:  # no "keeps some" step, so make the total divisible by k
            b += -(a + b) % k
        p.given("gift", b)
        p.say(f"{who['He']} gets {b} more from {friend['name']}.")
    total = p.step("total", items, "+", p.last if steps == 4 else "gift", f"{who['He']} has # {items}.")
    if steps >= 3:
        keep = p.given("kept", total % k + k * rng.randint(1, 3))
        p.say(f"{who['He']} keeps {keep} for {who['self']} and shares the rest equally among {k} friends.")
        p.step("shared", "total", "-", "kept", f"{who['He']} shares # {items}.")
    else:
        p.say(f"{who['He']} shares them equally among {k} friends.")
    p.given("friends", k)
    p.say(f"How many {items} does each friend get?")
    p.step("each", p.last, "/", "friends", f"Each friend gets # {items}.")


def _machine(p: _Problem, rng: random.Random, d: int, steps: int) -> None:
    noun, verbs, verb, product = rng.choice(_MACHINES)
    k = _factor(rng, d)
    boxed = steps in (2, 4)  # these variants end by packing into boxes of k
    rate = p.given("per_hour", k * _factor(rng, d) if boxed else _count(rng, d))
    t = p.given("hours", _factor(rng, d))
    if steps == 2:
        p.say(f"A {noun} {verbs} {rate} {product} per hour. It works for {t} hours.")
        p.step("made", "per_hour", "*", "hours", f"It {verbs} # {product}.")
    else:
        t2 = p.given("hours_tuesday", _factor(rng, d))
        p.say(f"A {noun} {verbs} {rate} {product} per hour. It works {t} hours on Monday and {t2} hours on Tuesday.")
        p.step("monday", "per_hour", "*", "hours", f"On Monday it {verbs} # {product}.")
        p.step("tuesday", "per_hour", "*", "hours_tuesday", f"On Tuesday it {verbs} # {product}.")
        p.step("made", "monday", "+", "tuesday", f"In the two days it {verbs} # {product}.")
        if not boxed:
            p.say(f"How many {product} does it {verb} in the two days?")
    if boxed:
        p.given("per_box", k)
        p.say(f"The {product} are packed in boxes of {k}. How many boxes are filled?")
        p.step("boxes", "made", "/", "per_box", "That fills # boxes.")


def _travel(p: _Problem, rng: random.Random, d: int, steps: int) -> None:
    vehicle = rng.choice(_VEHICLES)
    s, t = p.given("speed", _count(rng, d)), p.given("hours", _factor(rng, d))
    p.say(f"A {vehicle} travels at {s} km per hour for {t} hours.")
    p.step("first", "speed", "*", "hours", "First it goes # km.")
    if steps >= 3:
        s2, t2 = p.given("speed_2", _count(rng, d)), p.given("hours_2", _factor(rng, d))
        p.say(f"Then it travels at {s2} km per hour for {t2} hours.")
        p.step("second", "speed_2", "*", "hours_2", "Then it goes # km.")
        p.step("distance", "first", "+", "second", "In total it goes # km.")
        if steps == 3:
            p.say("How far does it travel in total?")
            return
    trip = p.given("trip", _round_up(rng, p.values[p.last]))
    p.say(f"The whole trip is {trip} km. How many km are left?")
    p.step("left", "trip", "-", p.last, "There are # km left.")


def _savings(p: _Problem, rng: random.Random, d: int, steps: int) -> None:
    who = _person(rng.choice(_PEOPLE))
    if steps >= 3:
        had = p.given("had", _count(rng, d))
        p.say(f"{who['name']} has ${had}.")
    s, w = p.given("per_week", _count(rng, d)), p.given("weeks", _factor(rng, d))
    p.say(f"{who['He'] if steps >= 3 else who['name']} saves ${s} each week for {w} weeks.")
    p.step("saved", "per_week", "*", "weeks", f"{who['He']} saves # dollars.")
    if steps >= 3:
        p.step("money", "had", "+", "saved", f"Now {who['he']} has # dollars.")
    if steps == 4:
        spent = p.given("spent", _count(rng, d))
        p.say(f"{who['He']} spends ${spent} on a gift.")
        p.step("left", "money", "-", "spent", f"After the gift {who['he']} has # dollars.")
    gift = rng.choice(_GIFTS)
    price = p.given("price", _round_up(rng, p.values[p.last], 10 if d == 1 else 100))
    p.say(f"{who['He']} wants a {gift} that costs ${price}. How much more money does {who['he']} need?")
    p.step("needed", "price", "-", p.last, f"{who['He']} needs # more dollars.")


def _packing(p: _Problem, rng: random.Random, d: int, steps: int) -> None:
    worker, verbs, container, product, packs = rng.choice(_FARMS)
    he = _person(rng.choice(_PEOPLE))["He"]
    b, c = p.given(container, _factor(rng, d)), p.given(f"per_{container[:-1]}", _count(rng, d))
    p.say(f"A {worker} {verbs} {b} {container} of {c} {product}.")
    made = p.step("made", container, "*", f"per_{container[:-1]}", f"The {worker} {verbs} # {product}.")
    if steps == 4:
        e = p.given("extra", _count(rng, d))
        p.say(f"{he} also {verbs} {e} more {product}.")
        made = p.step("total", "made", "+", "extra", f"That makes # {product}.")
    k = _factor(rng, d)
    sold = rng.randint(made // 4, 3 * made // 4)
    if steps >= 3:
        sold += (made - sold) % k  # what is left must fill whole packs
    p.given("sold", sold)
    p.say(f"{he} sells {sold} of them.")
    p.step("left", p.last, "-", "sold", f"# {product} are left.")
    if steps == 2:
        p.say(f"How many {product} are left?")
        return
    p.given("per_pack", k)
    p.say(f"{he} packs the rest into {packs} of {k}. How many {packs} does {he.lower()} fill?")
    p.step("packs", "left", "/", "per_pack", f"That fills # {packs}.")


def _comparison(p: _Problem, rng: random.Random, d: int, steps: int) -> None:
    a, b, c = (_person(x)["name"] for x in rng.sample(_PEOPLE, 3))
    items = rng.choice(_ITEMS)
    x, y = p.given(a.lower(), _count(rng, d)), p.given("difference", _count(rng, d))
    more = rng.random() < 0.5
    p.say(f"{a} has {x} {items}. {b} has {y} {'more' if more else 'fewer'} {items} than {a}.")
    p.step(b.lower(), a.lower(), "+" if more else "-", "difference", f"{b} has # {items}.")
    if steps == 2:
        p.say(f"How many {items} do they have altogether?")
        p.step("total", a.lower(), "+", b.lower(), f"Together they have # {items}.")
        return
    if rng.random() < 0.3:
        p.say(f"{c} has half as many {items} as {b}.")
        p.step(c.lower(), b.lower(), "/", 2, f"{c} has # {items}.")
    else:
        k = p.given("times", _factor(rng, d))
        p.say(f"{c} has {k} times as many {items} as {b}.")
        p.step(c.lower(), b.lower(), "*", "times", f"{c} has # {items}.")
    if steps == 3:
        p.say(f"How many more {items} does {c} have than {a}?")
        p.step("more", c.lower(), "-", a.lower(), f"{c} has # more {items} than {a}.")
        return
    p.say(f"How many {items} do the three have altogether?")
    p.step("pair", a.lower(), "+", b.lower(), f"{a} and {b} have # {items}.")
    p.step("total", "pair", "+", c.lower(), f"Together they have # {items}.")


def _reading(p: _Problem, rng: random.Random, d: int, steps: int) -> None:
    who = _person(rng.choice(_PEOPLE))
    per_day, days = p.given("per_day", _count(rng, d)), p.given("days", _factor(rng, d))
    p.say(f"{who['name']} reads {per_day} pages a day for {days} days.")
    p.step("read", "per_day", "*", "days", f"{who['He']} reads # pages.")
    if steps == 4:
        per_day_2, days_2 = p.given("per_day_2", _count(rng, d)), p.given("days_2", _factor(rng, d))
        p.say(f"Then {who['he']} reads {per_day_2} pages a day for {days_2} days.")
        p.step("read_2", "per_day_2", "*", "days_2", f"Then {who['he']} reads # pages.")
    elif steps == 3:
        more = p.given("read_2", _amount(rng, d))
        p.say(f"Then {who['he']} reads {more} more pages.")
    if steps >= 3:
        p.step("total_read", "read", "+", "read_2", f"In all {who['he']} reads # pages.")
    pages = p.given("pages", _round_up(rng, p.values[p.last]))
    p.say(f"{who['His']} book has {pages} pages. How many pages are left?")
    p.step("left", "pages", "-", p.last, "There are # pages left.")


def _bill(p: _Problem, rng: random.Random, d: int, steps: int) -> None:
    who = _person(rng.choice(_PEOPLE))
    trip = rng.choice(_TRIPS)
    k = p.given("friends", _factor(rng, d))
    cost = p.given("cost", k * _count(rng, d))
    e = p.given("lunch", _count(rng, d))
    p.say(f"{k} friends share the cost of a {trip} equally. It costs ${cost}. Each friend also pays ${e} for lunch.")
    p.step("share", "cost", "/", "friends", f"Each friend pays # dollars for the {trip}.")
    p.step("each", "share", "+", "lunch", "Each friend pays # dollars in all.")
    if steps >= 3:
        w = p.given("times", _factor(rng, d))
        p.say(f"They do this {w} times.")
        p.step("total", "each", "*", "times", "In total each friend pays # dollars.")
    if steps == 4:
        m = p.given("money", _round_up(rng, p.values[p.last]))
        p.say(f"{who['name']} is one of the friends and has ${m}. How much money does {who['he']} have left?")
        p.step("left", "money", "-", "total", f"{who['He']} has # dollars left.")
    else:
        p.say("How much does each friend pay" + (" in total?" if steps == 3 else "?"))


_TEMPLATES = (_shopping, _sharing, _machine, _travel, _savings, _packing, _comparison, _reading, _bill)


def _steps_range(difficulty: int) -> tuple[int, int]:
    return (2, 2) if difficulty == 0 else (2, 3) if difficulty == 1 else (2, 4) if difficulty == 2 else (3, 4)


def _draw(rng: random.Random, difficulty: int) -> _Problem:
    """One problem; draws again (from the same stream, so still deterministic) on a bad draw."""
    for _ in range(1000):
        template = rng.choice(_TEMPLATES)
        steps = rng.randint(*_steps_range(difficulty))
        problem = _Problem()
        try:
            template(problem, rng, difficulty, steps)
        except _Reject:
            continue
        return problem
    raise RuntimeError("arithmetic generator: 1000 bad draws in a row (a template bug)")


def reasoning_orders(problem: _Problem) -> list[tuple[list[int], tuple[bool, ...]]]:
    """Every valid way to write the solution: an order of the steps in which each step comes after the
    steps it uses (independent steps, e.g. Monday's and Tuesday's output, in either order), and for each
    step whether a commutative operation (+, *) writes its operands swapped. The last step stays last."""
    deps = [{j for j, (v, *_) in enumerate(problem.steps) if v in (left, right)}
            for _, left, _, right, _ in problem.steps]
    orders: list[list[int]] = []

    def extend(order: list[int]) -> None:
        if len(order) == len(deps):
            orders.append(order)
        for i in range(len(deps)):
            if i not in order and deps[i] <= set(order) and (i == len(deps) - 1) == (len(order) == len(deps) - 1):
                extend([*order, i])

    extend([])
    commutative = [op in "+*" for _, _, op, _, _ in problem.steps]
    swaps = [()]
    for can in commutative:
        swaps = [(*s, b) for s in swaps for b in ((False, True) if can else (False,))]
    return [(order, swap) for order in orders for swap in swaps]


def _vary(problem: _Problem, rng: random.Random) -> None:
    """Rewrite the N-CoT and the program in one valid reasoning order drawn from `rng` (`reasoning_orders`);
    the question and the answer are unchanged. The program states every given first."""
    order, swap = rng.choice(reasoning_orders(problem))
    stated = [line for line in problem.code if " = " in line and line.split(" = ", 1)[1].isdigit()]
    cot, code = [], list(stated)
    for i in order:
        var, left, op, right, sentence = problem.steps[i]
        if swap[i]:
            left, right = right, left
        a, b = (problem.values[x] if isinstance(x, str) else x for x in (left, right))
        cot.append(sentence.replace("#", f"{a} {op} {b} = {problem.values[var]}"))
        code.append(f"{var} = {left} {_PYOP[op]} {right}")
    problem.cot, problem.code = cot, code


def _record(problem: _Problem, record_id: str) -> Record:
    question = " ".join(problem.sentences)
    body = "".join(f"    {line}\n" for line in problem.code)
    program = f'def solution():\n    """{question}"""\n{body}    return {problem.last}'
    return Record(
        id=record_id,
        question=question,
        answer=str(problem.values[problem.last]),
        cot="\n".join(problem.cot),
        program=program,
        dataset="arithmetic",
    )


def normalize_question(question: str) -> str:
    """The key two problems are duplicates under: lower case, punctuation dropped, spaces collapsed."""
    return " ".join(re.sub(r"[^\w$]+", " ", question.lower()).split())


def _unique(
    rng: random.Random, n: int, difficulty: int, prefix: str, exclude: frozenset[str] = frozenset(),
    vary: random.Random | None = None,
) -> list[Record]:
    """The first `n` problems of the stream whose normalized question is new (and not in `exclude`); with
    `vary`, each annotated in a reasoning order drawn from that second stream (`_vary`)."""
    if difficulty < 0:
        raise ValueError(f"difficulty must be >= 0, got {difficulty}")
    seen, records = set(exclude), []
    for _ in range(100 * n + 1000):
        if len(records) == n:
            break
        problem = _draw(rng, difficulty)
        key = normalize_question(" ".join(problem.sentences))
        if key not in seen:
            seen.add(key)
            if vary is not None:
                _vary(problem, vary)
            records.append(_record(problem, f"{prefix}_{len(records)}"))
    if len(records) < n:
        raise ValueError(f"could only generate {len(records)} distinct problems out of {n}")
    return records


def generate(n: int, *, seed: int, difficulty: int = 1) -> list[Record]:
    """`n` distinct problems, ids ``arithmetic_{i}``.

    Args:
        n: how many problems.
        seed: the random seed; the same (n, seed, difficulty) always gives the same records, and a
            smaller n gives a prefix of a larger one.
        difficulty: 1 (the demo), 2 or 3 and up: bigger numbers and more steps (see the module table).

    Returns:
        Records with ``question``, ``cot`` (N-CoT), ``program`` (P-CoT), an integer ``answer``.
    """
    return _unique(random.Random(f"arithmetic/{seed}/{difficulty}"), n, difficulty, "arithmetic")


def make_splits(n_train: int, n_test: int, *, seed: int = 0, difficulty: int = 1,
                cot_orders: str = "one") -> tuple[list[Record], list[Record]]:
    """A train and a test split that never share a problem (by normalized question text).

    The test split is drawn from its own stream, so it does not change with ``n_train``; train
    problems that repeat a test question are skipped.

    Args:
        n_train: train size; ids ``arithmetic_train_{i}``.
        n_test: test size; ids ``arithmetic_test_{i}``.
        seed: the random seed.
        difficulty: as in `generate`.
        cot_orders: ``one``: every annotation solves in the problem's own order; ``varied``: each training
            question's annotation is one valid reasoning order drawn per question (`reasoning_orders`), so the
            one annotated CoT is one of several a sampler can find (the ReFT paper's premise). The problems,
            answers and the test split are the same either way.

    Returns:
        (train, test).
    """
    if cot_orders not in ("one", "varied"):
        raise ValueError(f"cot_orders must be 'one' or 'varied', got {cot_orders!r}")
    test = _unique(random.Random(f"arithmetic-test/{seed}/{difficulty}"), n_test, difficulty, "arithmetic_test")
    held_out = frozenset(normalize_question(r.question) for r in test)
    rng = random.Random(f"arithmetic-train/{seed}/{difficulty}")
    vary = random.Random(f"arithmetic-orders/{seed}/{difficulty}") if cot_orders == "varied" else None
    train = _unique(rng, n_train, difficulty, "arithmetic_train", exclude=held_out, vary=vary)
    return train, test
