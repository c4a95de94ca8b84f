"""Per-dataset judging of one extracted answer against one gold (`checker.md` §7).

Shared by the caller's fast path and the worker process: the only difference is the scalar
comparator passed in (`FastScalar` here, `symbolic.SympyScalar` in the worker). A judgement is
an `Outcome` whose status is one of correct, wrong, no_answer, guard, error, timeout, or
`undecided` (only from the fast comparator: the worker must finish it).

| dataset | numbers | extraction fallback | tolerance |
|---|---|---|---|
| gsm8k, svamp, arithmetic | exact rationals (float reprs at 12 significant digits) | last number | 0 |
| mathqa-numeric | exact rationals | last number | 0.01 absolute |
| math | structures + sympy | none | 0 |
| mathqa | option letter, or a value that maps to exactly one option | none | at option precision |
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

from rewards import expr
from rewards.equivalence import FastScalar, equal, prepare
from rewards.extract import extract_answer
from rewards.mcq import LETTERS, find_letter, map_value, options_from_question, parse_options
from rewards.normalize import clean_latex, numeric_value, round_sig, significant_digits

NUMERIC_DATASETS = frozenset({"gsm8k", "svamp", "mathqa-numeric", "arithmetic"})
DATASETS = NUMERIC_DATASETS | {"math", "mathqa"}
DEFAULT_TOLERANCE = {"mathqa-numeric": Fraction(1, 100)}
FLOAT_DIGITS = 12
"""Numbers written with more significant digits than this are float reprs: compared at 12."""
STATUSES = ("correct", "wrong", "no_answer", "timeout", "guard", "error")

@dataclass(frozen=True)
class Outcome:
    """Result of judging one answer (internal; `check.Verdict` is the public form)."""

    status: str
    extracted: str | None
    error: str | None = None


def default_tolerance(dataset: str) -> Fraction:
    return DEFAULT_TOLERANCE.get(dataset, Fraction(0))


def default_fallback(dataset: str) -> bool:
    """The last-number fallback is on for the GSM8K-style numeric datasets only."""
    return dataset in NUMERIC_DATASETS


def gold_text(gold: str) -> str:
    """Accept a full GSM8K solution as gold: keep what follows the last `####`."""
    return gold.rsplit("####", 1)[1].strip() if "####" in gold else gold.strip()


def judge_numeric(span: str, gold: str, tolerance: Fraction, cmp: FastScalar) -> Outcome:
    """GSM8K, SVAMP, MathQA-numeric, arithmetic: one exact number against the gold number."""
    g = numeric_value(gold_text(gold))
    if g is None:  # a non-numeric gold on a numeric dataset: judge it like MATH
        return judge_math(span, gold, cmp)
    if span.strip().lower() in ("nan", "inf", "-inf", "infinity"):
        return Outcome("wrong", span)
    p = numeric_value(span)
    if p is None:
        return Outcome("no_answer", span, "no number in the answer")
    if max(significant_digits(gold_text(gold)), significant_digits(span)) > FLOAT_DIGITS:
        # a float repr on either side (SVAMP golds like 0.4166666666666667, program results):
        # compare at 12 significant digits so binary noise in the last places is not an error
        p, g = round_sig(p, FLOAT_DIGITS), round_sig(g, FLOAT_DIGITS)
    return Outcome("correct" if abs(p - g) <= tolerance else "wrong", span)


def judge_math(span: str, gold: str, cmp: FastScalar) -> Outcome:
    """MATH: structures, then scalars through `cmp`."""
    g_node, p_node = prepare(gold_text(gold), gold=True), prepare(span)
    if p_node == ("expr", ""):
        return Outcome("no_answer", span, "empty answer")
    r = equal(g_node, p_node, cmp)
    if r is None:
        return Outcome("undecided", span)
    return Outcome("correct" if r else "wrong", span)


def judge_mcq(span: str, gold: str, options: str | list[str] | None, cmp: FastScalar,
              question: str | None = None) -> Outcome:
    """MathQA: the committed letter, else a value mapping to exactly one option."""
    gold_letter = gold.strip().strip("'\"()").lower()
    if gold_letter not in LETTERS or len(gold_letter) != 1:
        return judge_numeric(span, gold, Fraction(1, 100), cmp)
    letter = find_letter(span)
    if letter is not None:
        return Outcome("correct" if letter == gold_letter else "wrong", span)
    opts = parse_options(options) or options_from_question(question)
    if not opts:
        return Outcome("no_answer", span, "no option letter and no options to map a value to")
    value = numeric_value(span)
    letter, n = map_value(value, clean_latex(span), opts)
    if letter is not None:
        return Outcome("correct" if letter == gold_letter else "wrong", span)
    if n > 1:
        return Outcome("no_answer", span, "the value matches several options")
    return Outcome("wrong", span, "the value matches no option")


def judge_answer(span: str, gold: str, *, dataset: str, options: str | list[str] | None,
                 tolerance: Fraction, cmp: FastScalar, question: str | None = None) -> Outcome:
    """Judge an already-extracted answer (text span or a program's return value)."""
    try:
        if dataset == "mathqa":
            return judge_mcq(span, gold, options, cmp, question)
        if dataset in NUMERIC_DATASETS:
            return judge_numeric(span, gold, tolerance, cmp)
        return judge_math(span, gold, cmp)
    except expr.GuardError as e:
        return Outcome("guard", span, str(e))


def judge_text(completion: str, gold: str, *, dataset: str, options: str | list[str] | None,
               tolerance: Fraction, last_number_fallback: bool, cmp: FastScalar,
               question: str | None = None) -> Outcome:
    """Extract from a text completion, then judge."""
    ext = extract_answer(completion, last_number_fallback=last_number_fallback,
                         cut_parenthetical=dataset != "math")
    if ext.answer is None:
        status = "guard" if ext.reason == "answer too long" else "no_answer"
        return Outcome(status, None, ext.reason)
    return judge_answer(ext.answer, gold, dataset=dataset, options=options, tolerance=tolerance,
                        cmp=cmp, question=question)
