"""String normalisation of extracted answers and exact number parsing.

Everything here is pure Python, regex + `fractions.Fraction`, and runs in time linear in the
input (inputs are capped by the callers). It is the *fast path* of the checker: GSM8K-style
answers are decided here without sympy or a process round trip (`checker.md` §2).

What it does:
- `clean_latex` strips presentation (math delimiters, `\\left/\\right`, spacing, `\\text{}`,
  `\\dfrac`, degrees, percent and "pct", currency, trailing units and punctuation) and folds
  spellings (`32,\\! 348`, `14 {, }916`, `\\lt`, `\\gt`, `\\lbrace`, a doubled backslash before a
  command);
- `strip_units_words` removes trailing unit words after a number (numeric datasets only);
- `parse_number` reads a decimal, thousands-separated, mixed or repeating number as an exact
  `Fraction` (never a float), or returns None;
- `words_to_number` reads English number words ("forty-three", "1.5 million");
- `numeric_value` finds the one number an answer span states (`$1,250.50`, `x = 5`, `18 dollars`);
  a number glued into a word (`B2`, `AZYUK2A`) is a label, not a number (`loose_numbers`).

Percent is stripped on both sides and never rescaled (25% = 25, never 0.25), as `checker.md` §2
requires.
"""

from __future__ import annotations

import decimal
import re
from fractions import Fraction

from rewards import expr

MAX_NUMBER_CHARS = 1000
"""Longest number string parsed (answers are capped at 1,000 characters anyway)."""

# Unicode and ASCII variants folded to one spelling before anything else.
_UNICODE = {
    "\u2212": "-", "\u2012": "-", "\u2013": "-", "\u2014": "-", "\ufe63": "-", "\uff0d": "-",
    "\u00d7": r"\times ", "\u00f7": r"\div ", "\u00b7": r"\cdot ", "\u22c5": r"\cdot ",
    "\u221a": r"\sqrt", "\u03c0": r"\pi ", "\u221e": r"\infty ", "\u00b0": r"^\circ",
    "\u2264": r"\le ", "\u2265": r"\ge ", "\u2260": r"\ne ", "\u222a": r"\cup ", "\u2229": r"\cap ",
    "\u2205": r"\emptyset ", "\u00a0": " ", "\u2009": " ", "\u202f": " ", "\u2032": "'",
    "\u00bd": "1/2", "\u00bc": "1/4", "\u00be": "3/4", "\u20ac": "", "\u00a3": "", "\u00a5": "",
    "\u20b9": "", "\u00b2": "^2", "\u00b3": "^3",
}
_UNICODE_RE = re.compile("|".join(map(re.escape, _UNICODE)))

_DELIMS_RE = re.compile(r"\\\(|\\\)|\\\[|\\\]")
_LEFT_RIGHT_RE = re.compile(r"\\(?:left|right)\s*\.|\\(?:left|right|[bB]igg?[lr]?)(?![a-zA-Z])\s*")
_NEG_SPACE_RE = re.compile(r"(?<!\\)\\!")
# `32,\! 348` and `14 {, }916`: a thousands separator written with LaTeX spacing around it
_COMMA_NEG_SPACE_RE = re.compile(r",\s*\\!\s*")
_BRACED_COMMA_RE = re.compile(r"(?<=\d)\s*\{\s*,\s*\}\s*(?=\d)")
# `\lt`, `\gt` and the slanted variants are plain relation signs
_REL_SPELLINGS = {"\\lt": "<", "\\gt": ">", "\\leqslant": "\\le", "\\geqslant": "\\ge", "\\leqq": "\\le",
                  "\\geqq": "\\ge", "\\neq": "\\ne"}
_REL_SPELLINGS_RE = re.compile(r"(\\lt|\\gt|\\leqslant|\\geqslant|\\leqq|\\geqq|\\neq)(?![a-zA-Z])")
_SPACING_RE = re.compile(
    r"(?<!\\)\\[,;: ]|\\q?quad|\\(?:displaystyle|textstyle|scriptstyle|limits|nolimits)(?![a-zA-Z])|~"
)
_FRAC_VARIANTS_RE = re.compile(r"\\[dtc]frac(?![a-zA-Z])")
_BINOM_VARIANTS_RE = re.compile(r"\\[dt]binom(?![a-zA-Z])")
_DEGREES_RE = re.compile(
    r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|\\circ(?![a-zA-Z])|\^\s*\{\s*\\degree\s*\}|\\degree(?![a-zA-Z])"
    r"|\\text\{\s*degrees?\s*\}"
)
_PERCENT_RE = re.compile(
    r"\\%|%|\\text\{\s*percent\s*\}|(?<![a-zA-Z])(?:percent(?:age)?|pct)(?![a-zA-Z])", re.I)
_FRAC_SHORT_RE = re.compile(r"\\frac\s*([0-9a-zA-Z])\s*([0-9a-zA-Z])")
_FRAC_HALF_SHORT_1_RE = re.compile(r"\\frac\s*([0-9a-zA-Z])\s*\{")
_FRAC_HALF_SHORT_2_RE = re.compile(r"\\frac\s*(\{[^{}]*\})\s*([0-9a-zA-Z])")
_SQRT_SHORT_RE = re.compile(r"\\sqrt\s*([0-9a-zA-Z])")
_EMPTYSET_RE = re.compile(r"\\varnothing|\\emptyset|\\\{\s*\\\}")
_INFTY_RE = re.compile(r"\\infinity|\\infty|(?<![a-zA-Z])inf(?:inity)?(?![a-zA-Z])")
_BOLD_RE = re.compile(r"^\*+|\*+$|^_{2,}|_{2,}$")
_TRAIL_PUNCT = " .,;:?\n\t"  # not "!": in LaTeX it is a factorial
_LEAD_PUNCT = " ,;:!?\n\t"  # never a leading ".": ".75" is a number
# Text-like wrappers whose content is kept (`\\text{Evelyn}` -> `Evelyn`).
_WRAPPERS = ("text", "textbf", "textit", "textrm", "textnormal", "mathrm", "mathbf", "mathit",
             "mathsf", "mathtt", "boldsymbol", "bm", "mbox", "hbox", "operatorname", "emph")
_WRAPPER_RE = re.compile(r"\\(" + "|".join(_WRAPPERS) + r")\s*\{")
# A unit in a wrapper at the end of an answer: `5\\text{ cm}^2`, `3\\mbox{ inches}`.
# (never a word that changes the value: `5\\text{ squared}` is 25, `2\\text{ million}` is 2000000)
_TRAILING_UNIT_RE = re.compile(
    r"(?<=[0-9}).)])\s*\\(?:text|mbox|mathrm|textrm|hbox)\s*\{\s*"
    r"(?!(?:squared|cubed|factorial|hundred|thousand|million|billion|trillion)\b)[a-zA-Z][a-zA-Z .]*\}"
    r"(?:\s*\^\s*\{?\d\}?)?\s*$"
)
_UNIT_WORDS = (
    "square feet|square foot|square inches|square inch|square meters|square metres|square units|"
    "square miles|square yards|square centimeters|sq ft|sq feet|sq m|sq units|cubic feet|cubic inches|"
    "cubic meters|cubic units|cubic centimeters|units|unit|cm|mm|km|m|meters?|metres?|kilometers?|"
    "inches|inch|in|feet|foot|ft|yards?|yd|miles?|mi|mph|kmph|km/h|kph|hours?|hrs?|h|minutes?|mins?|"
    "seconds?|secs?|s|days?|weeks?|months?|years?|yrs?|kg|g|grams?|kilograms?|mg|lbs?|pounds?|"
    "ounces?|oz|liters?|litres?|l|ml|gallons?|cups?|dollars?|cents?|rupees?|rs|euros?|degrees?|"
    "percent|points?|people|persons?|students?|apples?|times|cm\\^2|m\\^2|cm\\^3|m\\^3"
)
_UNIT_AFTER_NUMBER_RE = re.compile(r"(?<=[0-9}])\s*(?:" + _UNIT_WORDS + r")\.?\s*$", re.I)

_CURRENCY_PREFIX_RE = re.compile(r"^(?:rs\s*\.?|inr|usd|us\$|\\\$|\$|s\s*\.)\s*", re.I)
_DOLLAR_RE = re.compile(r"\\\$|\$")

# --- numbers -------------------------------------------------------------------------------
_SIGN = r"[+-]?"
_INT_GROUPED = r"\d{1,3}(?:,\d{3})+(?![\d])"
_DECIMAL_BODY = rf"(?:(?:{_INT_GROUPED}|\d+)(?:\.\d*)?|\.\d+)"
_DECIMAL_RE = re.compile(rf"{_SIGN}{_DECIMAL_BODY}(?:[eE][+-]?\d{{1,3}})?")
_SPACE_THOUSANDS_RE = re.compile(r"[+-]?\d{1,3}(?: \d{3})+(?:\.\d+)?")
_FRACTION_RE = re.compile(rf"({_SIGN})\s*({_DECIMAL_BODY})\s*/\s*({_DECIMAL_BODY})")
_MIXED_RE = re.compile(r"([+-]?)\s*(\d{1,3}(?: \d{3})+|\d+)\s+(\d+)\s*/\s*(\d+)")
_LATEX_FRAC_RE = re.compile(rf"({_SIGN})\s*(\d+)?\s*\\frac\{{\s*({_DECIMAL_BODY})\s*\}}\{{\s*({_DECIMAL_BODY})\s*\}}")
_REPEATING_RE = re.compile(r"([+-]?)(\d*)\.(\d*)\\overline\{(\d+)\}")
_SCI_RE = re.compile(rf"({_SIGN}{_DECIMAL_BODY})\s*(?:\\times|\\cdot|\*|x)\s*10\s*\^\s*\{{?\s*([+-]?\d{{1,3}})\s*\}}?")


def fold_unicode(s: str) -> str:
    """Map Unicode math symbols (minus sign, ×, √, π, °, …) to their ASCII/LaTeX spelling."""
    return _UNICODE_RE.sub(lambda m: _UNICODE[m.group(0)], s)


def _unwrap(s: str, start: int, brace_open: int) -> tuple[str, int] | None:
    """Return (content, end) of the brace group opening at `brace_open`, or None if unbalanced."""
    depth = 0
    for i in range(brace_open, len(s)):
        c = s[i]
        if c == "{" and (i == 0 or s[i - 1] != "\\"):
            depth += 1
        elif c == "}" and (i == 0 or s[i - 1] != "\\"):
            depth -= 1
            if depth == 0:
                return s[brace_open + 1:i], i + 1
    return None


def unwrap_text_commands(s: str) -> str:
    """Replace `\\text{X}`, `\\mathrm{X}`, `\\mathbf{X}`, … by X (linear scan per wrapper)."""
    for _ in range(20):  # bounded: nested wrappers are rare; each pass removes one layer
        m = _WRAPPER_RE.search(s)
        if m is None:
            return s
        group = _unwrap(s, m.start(), m.end() - 1)
        if group is None:
            return s[:m.start()] + s[m.end():]
        content, end = group
        s = s[:m.start()] + content + s[end:]
    return s


def strip_math_delimiters(s: str) -> str:
    """Drop `$`, `\\(`, `\\)`, `\\[`, `\\]` and `\\$` wherever they are (they carry no value)."""
    return _DOLLAR_RE.sub("", _DELIMS_RE.sub("", s))


# `\\frac`, `\\le`: a doubled backslash before a command (an escaping slip) is the command itself
_DOUBLED_COMMAND_RE = re.compile(
    r"(?<!\\)\\\\(?=(?:left|right|[dtc]?frac|sqrt|leq?|geq?|lt|gt|neq?|text|mathrm|mathbf|pi|infty|cdot|times"
    r"|pm|mp|in|cup|cap|boxed|circ|emptyset|varnothing|quad|qquad)(?![a-zA-Z]))")


def clean_latex(s: str) -> str:
    """Remove presentation-only LaTeX and normalise spellings; keeps the mathematical content.

    Safe for every dataset: it never deletes letters that could be part of an answer, except a
    unit wrapped in `\\text{…}` directly after a number.
    """
    s = fold_unicode(s)
    if "\\\\" in s and "\\begin" not in s:
        s = _DOUBLED_COMMAND_RE.sub(lambda m: "\\", s)
    s = strip_math_delimiters(s)
    s = _LEFT_RIGHT_RE.sub("", s)
    s = _COMMA_NEG_SPACE_RE.sub(",", s)  # `32,\\! 348` is one number
    s = _NEG_SPACE_RE.sub("", s)  # `32,\\!348` is one number
    s = _BRACED_COMMA_RE.sub(",", s)  # `14 {, }916` is 14,916
    s = _SPACING_RE.sub(" ", s)
    s = s.replace("{,}", ",")
    s = _FRAC_VARIANTS_RE.sub(r"\\frac", s)
    s = _BINOM_VARIANTS_RE.sub(r"\\binom", s)
    s = _DEGREES_RE.sub("", s)
    s = _PERCENT_RE.sub("", s)
    s = _TRAILING_UNIT_RE.sub("", s)
    s = unwrap_text_commands(s)
    s = _FRAC_SHORT_RE.sub(r"\\frac{\1}{\2}", s)
    s = _FRAC_HALF_SHORT_1_RE.sub(r"\\frac{\1}{", s)
    s = _FRAC_HALF_SHORT_2_RE.sub(r"\\frac\1{\2}", s)
    s = _SQRT_SHORT_RE.sub(r"\\sqrt{\1}", s)
    s = s.replace("\\lbrace", "\\{").replace("\\rbrace", "\\}")
    s = _EMPTYSET_RE.sub(r"\\emptyset", s)
    s = _INFTY_RE.sub(r"\\infty", s)
    s = _REL_SPELLINGS_RE.sub(lambda m: _REL_SPELLINGS[m.group(1)], s)
    s = s.replace("\\mathbb{R}", "\\mathbb R").replace("\\mathbb R", "\\R")
    s = " ".join(s.split())
    s = s.lstrip(_LEAD_PUNCT).rstrip(_TRAIL_PUNCT)
    s = _BOLD_RE.sub("", s).lstrip(_LEAD_PUNCT).rstrip(_TRAIL_PUNCT)
    return s


def strip_units_words(s: str) -> str:
    """Drop currency prefixes and unit words after a number (`$18`, `rs . 300`, `45 mph`)."""
    s = _CURRENCY_PREFIX_RE.sub("", s.strip())
    for _ in range(3):  # "5 square feet per hour" needs more than one pass; bounded
        t = _UNIT_AFTER_NUMBER_RE.sub("", s).lstrip(_LEAD_PUNCT).rstrip(_TRAIL_PUNCT)
        if t == s:
            break
        s = t
    return s


_GROUPED_RE = re.compile(_INT_GROUPED)
_PAIR_OPEN = ("(", "[")
_PAIR_CLOSE = (")", "]")


def collapse_thousands(s: str) -> str:
    """`1,250` -> `1250` and `32,348.5` -> `32348.5`; `1,22` and `1, 250` are left alone.

    A bracket holding exactly `d,ddd` is a pair, not a number: `(12,102)` is the point or interval
    (12, 102), never 12102 (an interval endpoint is not written with a thousands separator)."""
    def sub(m: re.Match[str]) -> str:
        text = m.group(0)
        if text.count(",") == 1:
            before = s[:m.start()].rstrip().rstrip("+-").rstrip()  # "[-36,104]" too
            after = s[m.end():].lstrip()
            if before.endswith(_PAIR_OPEN) and after.startswith(_PAIR_CLOSE):
                return text
        return text.replace(",", "")
    return _GROUPED_RE.sub(sub, s)


def _to_fraction(text: str) -> Fraction | None:
    text = text.replace(",", "")
    if len(text) > MAX_NUMBER_CHARS:
        return None
    try:
        return Fraction(text)
    except (ValueError, ZeroDivisionError):
        return None


def parse_number(s: str) -> Fraction | None:
    """Parse a whole string as one exact number, or return None.

    Accepts `-1,250`, `1 000`, `.75`, `18.00`, `1.2e3`, `3/4`, `7 3/4`, `1 1 / 5`, `\\frac{3}{4}`,
    `2\\frac{1}{2}` (mixed, = 5/2), `0.\\overline{3}` and `1.2\\times10^{3}`. Never reads `,` as a
    decimal point.
    """
    s = s.strip()
    if not s or len(s) > MAX_NUMBER_CHARS:
        return None
    if s[0] in "+-" and len(s) > 1 and s[1] == " ":
        s = s[0] + s[1:].lstrip()  # MathQA writes "- 120"
    if s[0] == "+":
        s = s[1:].lstrip()
    m = _DECIMAL_RE.fullmatch(s)
    if m:
        return _to_fraction(s)
    if _SPACE_THOUSANDS_RE.fullmatch(s):
        return _to_fraction(s.replace(" ", ""))
    m = _MIXED_RE.fullmatch(s)
    if m:
        whole, top, bottom = int(m.group(2).replace(" ", "")), int(m.group(3)), int(m.group(4))
        if bottom == 0 or top >= bottom:
            return None  # "7 9/4" is not a mixed number
        mixed = whole + Fraction(top, bottom)
        return -mixed if m.group(1) == "-" else mixed
    m = _FRACTION_RE.fullmatch(s)
    if m:
        num, den = _to_fraction(m.group(2)), _to_fraction(m.group(3))
        if num is None or not den:
            return None
        value = num / den
        return -value if m.group(1) == "-" else value
    m = _LATEX_FRAC_RE.fullmatch(s)
    if m:
        num, den = _to_fraction(m.group(3)), _to_fraction(m.group(4))
        if num is None or not den:
            return None
        value = num / den
        if m.group(2) is not None:  # mixed number 2\frac{1}{2}: only with integer parts
            if num.denominator != 1 or den.denominator != 1 or num >= den:
                return None
            value += int(m.group(2))
        return -value if m.group(1) == "-" else value
    m = _REPEATING_RE.fullmatch(s)
    if m:
        sign, head, fixed, rep = m.groups()
        base = Fraction(int(head or "0")) + (Fraction(int(fixed), 10 ** len(fixed)) if fixed else Fraction(0))
        repeating = base + Fraction(int(rep), (10 ** len(rep) - 1) * 10 ** len(fixed))
        return -repeating if sign == "-" else repeating
    m = _SCI_RE.fullmatch(s)
    if m:
        mant = _to_fraction(m.group(1))
        return None if mant is None else mant * Fraction(10) ** int(m.group(2))
    return None


# --- number words --------------------------------------------------------------------------
_UNITS_WORDS = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
    "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14,
    "fifteen": 15, "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19, "twenty": 20,
    "thirty": 30, "forty": 40, "fourty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80,
    "ninety": 90,
}
_SCALES = {"hundred": 100, "thousand": 1000, "million": 10**6, "billion": 10**9, "trillion": 10**12}
_WORD_ALT = "|".join(sorted([*_UNITS_WORDS, *_SCALES], key=len, reverse=True))  # longest first
_NUMBER_WORD_RE = re.compile(
    r"(?:(?:minus|negative)\s+)?(?:(?:\d+(?:\.\d+)?|(?:" + _WORD_ALT + r"|a)\b)(?:[\s-]+(?:and[\s-]+)?)?)+",
    re.I,
)


def words_to_number(s: str) -> Fraction | None:
    """Read "eighteen", "forty-three", "three hundred and twenty", "1.5 million"; else None."""
    words = s.lower().replace("-", " ").split()
    if not words or len(words) > 12:
        return None
    sign = Fraction(1)
    if words[0] in ("minus", "negative"):
        sign, words = Fraction(-1), words[1:]
    total, current, seen = Fraction(0), Fraction(0), False
    for w in words:
        if w == "and":
            continue
        if w in _UNITS_WORDS:
            current += _UNITS_WORDS[w]
        elif w in _SCALES:
            current = (current if current else Fraction(1)) * _SCALES[w]
            if _SCALES[w] >= 1000:
                total, current = total + current, Fraction(0)
        elif w == "a" and not seen:
            current += 1  # "a hundred"
        else:
            num = parse_number(w)
            if num is None or seen:
                return None
            current += num
        seen = True
    return sign * (total + current) if seen else None


def find_number_words(s: str) -> Fraction | None:
    """Return the value of a number spelled in words if `s` is (almost) only that, else None."""
    s = s.strip().lstrip(_LEAD_PUNCT).rstrip(_TRAIL_PUNCT)
    m = _NUMBER_WORD_RE.match(s)
    if m is None or m.end() == 0:
        return None
    rest = s[m.end():].strip()
    if rest and (len(rest.split()) > 3 or any(c.isdigit() for c in rest)):
        return None  # "three apples" is fine; "three or 4" is not
    if not re.search(r"\b(?:" + _WORD_ALT + r")\b", m.group(0), re.I):
        return None
    return words_to_number(m.group(0).strip(" -"))


_PLAIN_DECIMAL_RE = re.compile(r"[+-]?(\d*)\.?(\d*)")


def significant_digits(s: str) -> int:
    """Significant digits of a plain decimal string (`0.4166666666666667` has 16); 0 for integers
    and anything else."""
    m = _PLAIN_DECIMAL_RE.fullmatch(s.strip().replace(",", ""))
    if m is None or "." not in s:
        return 0  # integers are exact whatever their length
    digits = (m.group(1) + m.group(2)).lstrip("0")
    return len(digits)


def round_sig(x: Fraction, digits: int = 12) -> Fraction:
    """Round to `digits` significant digits, exactly (float reprs carry noise past ~15 digits)."""
    if x == 0:
        return x
    ctx = decimal.Context(prec=digits, rounding=decimal.ROUND_HALF_EVEN)
    value = ctx.divide(decimal.Decimal(x.numerator), decimal.Decimal(x.denominator))
    return Fraction(value)


_NUMBER_IN_TEXT_RE = re.compile(
    r"(?<![A-Za-z_\d.])-?(?:\d+\s+\d+\s*/\s*\d+|\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?(?:\s*/\s*\d+)?|\.\d+)"
    r"(?P<glued>[A-Za-z]*)"
)
GLUED_SUFFIXES = frozenset(
    "st nd rd th s m cm mm km kg g mg lb lbs oz ml l h hr hrs min mins sec secs am pm mph ft in yd mi"
    .split()
)
"""Letters that may follow a number with no space (`5km`, `3rd`, `10am`). Any other letters glued
to a number (`2A`, `5k`, `3x`), or letters glued before it (`B2`, `AZYUK2A`), make it a label, not a
number."""


def loose_numbers(s: str) -> list[str]:
    """The numbers written in free text, skipping numbers glued into words (`B2`, `AZYUK2A`)."""
    out = []
    for m in _NUMBER_IN_TEXT_RE.finditer(s):
        glued = m.group("glued")
        if glued and glued.lower() not in GLUED_SUFFIXES:
            continue
        out.append(m.group(0)[:len(m.group(0)) - len(glued)] if glued else m.group(0))
    return out


def numeric_value(span: str) -> Fraction | None:
    """The single number an answer span states (`$1,250.50`, `18 dollars`, `x = 5`, `eighteen`).

    Returns None when there is no number or several competing ones ("2 hours and 30 minutes").
    Raises expr.GuardError for oversized expressions.
    """
    s = strip_units_words(clean_latex(span))
    if "=" in s:
        s = strip_units_words(s.rsplit("=", 1)[1])  # "5 + 3 = 8" and "x = 8" mean 8
    value = parse_number(s)
    if value is not None:
        return value
    compact = collapse_thousands(s)
    try:
        return expr.eval_rational(expr.parse(compact))
    except expr.GuardError:
        raise
    except (expr.ParseError, expr.NotRational, ZeroDivisionError, ValueError, OverflowError):
        pass
    except RecursionError:
        raise expr.GuardError("expression nested too deeply") from None
    value = find_number_words(s)
    if value is not None:
        return value
    if s.rstrip().endswith(("+", "-", "*", "/", "^", "=")):
        return None  # "1 +": a dangling operator, not a committed number
    numbers = loose_numbers(s)
    if len(numbers) == 1:
        return parse_number(numbers[0])
    return None
