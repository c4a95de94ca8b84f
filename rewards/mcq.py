"""MathQA multiple choice: parse the inline options and find the committed option letter.

Rules (`checker.md` §4):
- options come inline, e.g. `a ) 38 , b ) 27.675 , c ) 30 , d ) data inadequate , e ) none of these`,
  sometimes as a Python-list string or with a repeated letter (`b ) b ) 120 %`);
- a letter is read from `c`, `(B)`, `D) 20%`, `c ) 870`, `option (a)`, `\\boxed{D}`, `'c'`;
  the article "a" ("a total of 38") and letters used as variables (`d = 20`) are not letters;
- without a letter, a value maps to an option only if **exactly one** option has that value (MathQA
  has duplicated options); when a letter and a value both appear, the letter wins.
A value matches an option with the same text, else the same exact value, else the same value at the
option's printed precision, rounded or truncated (`16.66 %` matches 16.666…), because MathQA
options are rounded or truncated.
"""

from __future__ import annotations

import re
from fractions import Fraction

from rewards.normalize import clean_latex, numeric_value, strip_math_delimiters, unwrap_text_commands

LETTERS = "abcde"

_OPTION_MARK_RE = re.compile(r"(?:^|(?<=[\s,\['\"]))([a-eA-E])\s*\)\s*")
_LETTER_ONLY_RE = re.compile(r"[\"'(\[{\s]*([a-eA-E])[\"')\]}\s.:]*")
_LETTER_PAREN_RE = re.compile(r"\(?([a-eA-E])\s*\)\s*\S")
_LETTER_DOT_RE = re.compile(r"([A-E])\s*[.:]\s+\S")
_PREFIX_RE = re.compile(r"^(?:the\s+)?(?:correct\s+)?(?:option|choice|answer)\s*(?:is\s*)?:?\s*", re.I)
_DECIMALS_RE = re.compile(r"\.(\d+)")


def parse_options(options: str | list[str] | None) -> dict[str, str]:
    """Map letters a–e to option texts; {} when nothing parses."""
    if options is None:
        return {}
    if isinstance(options, (list, tuple)):
        options = " , ".join(str(o) for o in options)
    text = options.strip().strip("[]")
    marks: list[re.Match[str]] = []
    for m in _OPTION_MARK_RE.finditer(text):
        if marks and marks[-1].group(1).lower() == m.group(1).lower():
            continue  # "b ) b ) 120 %": the repeated mark belongs to the option text
        marks.append(m)
    out: dict[str, str] = {}
    for k, m in enumerate(marks):
        letter = m.group(1).lower()
        if letter in out:
            continue
        end = marks[k + 1].start() if k + 1 < len(marks) else len(text)
        body = text[m.end():end].strip().strip(",'\"").strip()
        out[letter] = body
    # a repeated mark leaves "b ) 120 %" in the body of b
    for letter, body in out.items():
        out[letter] = re.sub(r"^[a-eA-E]\s*\)\s*", "", body).strip(" ,'\"")
    return out


def options_from_question(question: str | None) -> dict[str, str]:
    """MathQA questions end with a line of inline options; parse it if present."""
    if not question:
        return {}
    last = question.strip().split("\n")[-1]
    opts = parse_options(last)
    return opts if len(opts) >= 2 else {}


def find_letter(span: str) -> str | None:
    """The option letter a span commits to, or None (no letter, or an article/variable)."""
    s = unwrap_text_commands(strip_math_delimiters(span)).strip()
    s = _PREFIX_RE.sub("", s).strip()
    m = _LETTER_ONLY_RE.fullmatch(s)
    if m:
        return m.group(1).lower()
    m = _LETTER_PAREN_RE.match(s)
    if m and (s.startswith("(") or s[1:2] in (")", " ")):
        return m.group(1).lower()
    m = _LETTER_DOT_RE.match(s)  # "C. 870": upper case only, "a. 5" is too ambiguous
    if m:
        return m.group(1).lower()
    return None


def option_value(text: str) -> Fraction | None:
    """Numeric value of an option text such as `rs . 130`, `32 kmph`, `16 2 / 3 %`, `28 / 55`."""
    try:
        return numeric_value(text.replace("√", "\\sqrt "))
    except ValueError:  # GuardError on an absurd option: treat it as text
        return None


def _canon(text: str) -> str:
    return " ".join(clean_latex(text).lower().split()).strip(" .")


def _at_printed_precision(value: Fraction, option: Fraction, body: str) -> bool:
    """Does `value` round or truncate to the option as printed (`16.666` -> `16.66` / `16.67`)?"""
    m = _DECIMALS_RE.search(body)
    if m is None:
        return False  # integer options are matched exactly only
    unit = Fraction(1, 10 ** len(m.group(1)))
    steps = value / unit
    rounded = (steps + Fraction(1, 2)).__floor__() * unit
    truncated = (steps.__floor__() if steps >= 0 else -((-steps).__floor__())) * unit
    return option in (rounded, truncated)


def map_value(value: Fraction | None, text: str, options: dict[str, str]) -> tuple[str | None, int]:
    """The option a value (or text) answer names: (letter or None, number of matching options).

    Tried in order, the first stage with any match decides: the same text as an option; the
    same exact value; the same value at the option's printed precision. Several matches in the
    deciding stage mean the answer is ambiguous (MathQA repeats option values).
    """
    canon = _canon(text)
    stages = [[letter for letter, body in options.items() if canon and _canon(body) == canon]]
    if value is not None:
        values = {letter: option_value(body) for letter, body in options.items()}
        stages.append([letter for letter, v in values.items() if v is not None and v == value])
        stages.append([letter for letter, v in values.items()
                       if v is not None and _at_printed_precision(value, v, options[letter])])
    for hits in stages:
        if hits:
            return (hits[0] if len(hits) == 1 else None), len(hits)
    return None, 0
