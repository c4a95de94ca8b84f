"""Answer equivalence: structure first (lists, sets, tuples, intervals, equations, matrices),
then scalars (exact rationals on the fast path, sympy in the worker process).

Why two comparators:
- `FastScalar` uses only `Fraction` and string normalisation. It answers True/False when it can
  and None ("undecided") otherwise. It runs in the caller's process, so GSM8K-style checks cost
  microseconds and no process round trip.
- `SympyScalar` (worker only, under a deadline) settles the undecided cases: it builds sympy
  objects from `expr.py`'s AST, or from `latex2sympy2_extended` for LaTeX outside that grammar,
  after the guards of `checker.md` §6.

Equality rules (`checker.md` §3):
- numbers are exact rationals; a tolerance is applied only when the caller asks (MathQA-numeric
  and `reft_compat` use 0.01 absolute); approximations never equal irrationals (6.28 != 2*pi);
- comma lists, `\\{…\\}` and bare `{…}` are unordered multisets; `(…)`/`[…]` with several elements
  are ordered and their bracket types must match, so [0,5] != (0,5); a gold point equals a bare
  list (or assignments) written in the same order, never a set;
- a name on the left of `=` (`x`, `(p, q)`, `V_1:V_2`, `|AB|`, `\\frac{NO}{BO}`) reduces to the right
  side, so `x = 3` matches `3`, but `x + z = 1` stays an equation; a chain `x = 2 + 3 = 5` means 5;
  two equations match side by side or when one is a non-zero multiple of the other;
- an inequality in one variable equals its interval, in either direction (`0 < f(x) < 1` = (0, 1));
  `x \\in S` is S; two relations match when one is the other times a positive factor;
- matrices compare shape and entries (matrix arithmetic goes to sympy); text compares
  case-insensitively.
See `docs/checker.md` for where these rules extend `checker.md` (issue 20).
"""

from __future__ import annotations

import re
from fractions import Fraction
from typing import Any

from rewards import expr
from rewards.normalize import clean_latex, collapse_thousands, parse_number, strip_units_words

SNode = tuple[Any, ...]
"""Structure node: ('expr', s) | ('text', s) | ('list', items) | ('set', items) |
('seq', open, close, items) | ('union', items) | ('eq', parts) | ('rel', ops, parts) |
('matrix', rows, source) | ('empty',) | ('reals',)."""

MAX_ITEMS = 50
MAX_STRUCT_DEPTH = 8
MAX_ANSWER_CHARS = 1000

_MATRIX_RE = re.compile(r"\\begin\{([pbvBV]?matrix|array)\}(?:\{[^{}]*\})?(.*)\\end\{\1\}", re.S)
_TEXT_RE = re.compile(r"[A-Za-z][A-Za-z .'\-]*")
_LETTER_RE = re.compile(r"\(?([A-Za-z])\)?")
_BASE_SUBSCRIPT_RE = re.compile(r"\d_\{?\d")
_REL_RE = re.compile(r"\\leq?(?![a-zA-Z])|\\geq?(?![a-zA-Z])|\\ne(?![a-zA-Z])|<=|>=|!=|<|>")
_REL_CANON = {"\\le": "le", "\\leq": "le", "<=": "le", "<": "lt",
              "\\ge": "ge", "\\geq": "ge", ">=": "ge", ">": "gt", "\\ne": "ne", "!=": "ne"}
_FLIP = {"le": "ge", "ge": "le", "lt": "gt", "gt": "lt"}
_JUXTAPOSED_RE = re.compile(r"(?<![\d.^_{])\d+(?:\.\d+)?\s+\d")
_KNOWN_WORDS = {"sin", "cos", "tan", "log", "ln", "exp", "sqrt", "pi"}


def _opener_len(s: str, i: int) -> int:
    if s.startswith("\\{", i) or s.startswith("\\}", i):
        return 2
    if s.startswith("\\langle", i) or s.startswith("\\rangle", i):
        return 7
    return 1


def split_top(s: str, sep: str) -> list[str]:
    """Split at `sep` outside any brackets; `[0,5)` counts as balanced (intervals mix types)."""
    parts, depth, start, i, n = [], 0, 0, 0, len(s)
    while i < n:
        c = s[i]
        if s.startswith("\\langle", i):
            depth += 1
            i += 7
            continue
        if s.startswith("\\rangle", i):
            depth -= 1
            i += 7
            continue
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif depth == 0 and s.startswith(sep, i):
            # `=` inside `<=`, `>=`, `!=`, `==` is not an equation sign
            if not (sep == "=" and ((i > 0 and s[i - 1] in "<>!=") or s.startswith("==", i))):
                if not (sep[0] == "\\" and i + len(sep) < n and s[i + len(sep)].isalpha()):
                    parts.append(s[start:i])
                    start = i + len(sep)
                    i = start
                    continue
        i += 1
    parts.append(s[start:])
    return parts


def _outer_bracket(s: str) -> tuple[str, str, str] | None:
    """If s is one bracketed group `(…)`, `[…)`, `\\{…\\}`, `\\langle…\\rangle`, return (open, inner, close)."""
    if not s or s[0] not in "([{\\":
        return None
    if s[0] == "\\" and not (s.startswith("\\{") or s.startswith("\\langle")):
        return None
    depth, i, n = 0, 0, len(s)
    while i < n:
        if s.startswith("\\{", i) or s.startswith("\\}", i):
            depth, i = depth + (1 if s[i + 1] == "{" else -1), i + 2
        elif s.startswith("\\langle", i):
            depth, i = depth + 1, i + 7
        elif s.startswith("\\rangle", i):
            depth, i = depth - 1, i + 7
        else:
            c = s[i]
            if c in "([{":
                depth += 1
            elif c in ")]}":
                depth -= 1
            i += 1
        if depth == 0:
            if i != n:
                return None
            break
    else:
        return None
    open_len = _opener_len(s, 0)
    close_len = 7 if s.endswith("\\rangle") else 2 if s.endswith("\\}") else 1
    opener, closer = s[:open_len], s[n - close_len:]
    return opener, s[open_len:n - close_len], closer


def _is_text(s: str) -> bool:
    if not _TEXT_RE.fullmatch(s):
        return False
    words = s.lower().split()
    return (" " in s.strip() or len(s) >= 3) and not any(w in _KNOWN_WORDS for w in words)


_SUB = r"(?:_\{[^{}]*\}|_\w)"
_NAME = (rf"(?:[A-Za-z]|\\[a-zA-Z]+){_SUB}?'?(?:\^\{{-1\}})?(?:\([^()]*\))?|[A-Z]{{1,4}}{_SUB}?|\[[A-Z]{{2,5}}\]"
         r"|\\overline\{[A-Z]{1,4}\}|m?\s*\\angle\s*[A-Z]{1,3}")
_LHS_NAME_RE = re.compile(
    rf"(?:\|(?:{_NAME})\||{_NAME}"
    # a function of a name: \sin\theta, \tan\angle APB, \cos(x)
    rf"|\\(?:sin|cos|tan|cot|sec|csc|log|ln)\s*(?:\^\{{?\d\}}?)?\s*(?:{_NAME}|\([^()]*\)|\{{[^{{}}]*\}}))"
)
_VARIABLE_RE = re.compile(r"[A-Za-z](?:_\{?\w+\}?)?(?:\([a-z]\))?")
_OR_RE = re.compile(r"\s*\bor\b\s*", re.I)
_LEADING_AND_RE = re.compile(r"^\s*and\s+", re.I)
_PM_RE = re.compile(r"\\(?:pm|mp)(?![a-zA-Z])")
# "5 ways", "3 sides": a number followed only by a few plain words is that number, unless a word
# changes the value ("5 squared", "2 thousand", "3 halves", "5 pi")
_NUMBER_WORDS_RE = re.compile(r"([-+]?\d+(?:\.\d+)?)((?:\s+[A-Za-z]{3,}){1,3})")
_VALUE_WORDS_RE = re.compile(
    r"squared|cubed|factorial|hundred|thousand|million|billion|trillion|halves|half|thirds?|quarters?|"
    r"\w+ths?|times|plus|minus|over|divided|roots?|sqrt|percent|degrees?|radians?|and|or|to|by|of|less|more",
    re.I)


def _is_name(s: str) -> bool:
    """`x`, `y_1`, `f(x)`, `AB`, `|AB|`, `\\overline{AB}`, `V_1:V_2`, `\\frac{NO}{BO}`, `A/B`: a quantity's
    name. `x+z`, `2x`, `a^2+b` are expressions, not names."""
    s = s.strip()
    if _LHS_NAME_RE.fullmatch(s):
        return True
    m = re.fullmatch(r"\\frac\{([^{}]+)\}\{([^{}]+)\}", s)
    if m:
        return _is_name(m.group(1)) and _is_name(m.group(2))
    for sep in (":", "/"):
        parts = s.split(sep)
        if len(parts) > 1 and all(p.strip() and _LHS_NAME_RE.fullmatch(p.strip()) for p in parts):
            return True
    return False


def _top_split(s: str, sep: str) -> list[str] | None:
    """`split_top`, or None when `sep` does not occur at the top level."""
    parts = split_top(s, sep)
    return parts if len(parts) > 1 else None


def parse_structure(s: str, depth: int = 0) -> SNode:
    """Turn a cleaned answer string into a structure node (see SNode); leaves stay strings."""
    if depth > MAX_STRUCT_DEPTH:
        raise expr.GuardError("answer structure nested too deeply")
    s = s.strip().strip(",;")
    if "\\approx" in s:
        # "x = 1/3 \approx 0.33" commits to 1/3; "x \approx 11" alone states 11
        k = s.find("\\approx")
        s = s[:k].strip() if "=" in s[:k] else s.replace("\\approx", "=", 1)
    if s.startswith("{") and s.endswith("}") and _outer_bracket(s) is not None:
        if "," not in s and ";" not in s:
            s = s[1:-1].strip()  # a bare brace group is only grouping
        else:  # bare `{1, 3}`: braces are invisible in LaTeX, so this is the list 1, 3
            return ("list", [parse_structure(p, depth + 1) for p in split_top(s[1:-1], ",") if p.strip()])
    if s.startswith("\\{"):
        condition = _set_builder(s)
        if condition is not None:
            return parse_structure(condition, depth + 1)
    m = _MATRIX_RE.fullmatch(s)
    if m and "\\begin{" not in m.group(2) and "\\end{" not in m.group(2):
        rows = [r for r in split_top(m.group(2), "\\\\") if r.strip()]
        return ("matrix", [[parse_structure(c, depth + 1) for c in split_top(r, "&")] for r in rows], s)
    parts = _top_split(s, "\\in")
    if parts is not None and len(parts) == 2 and _is_name(parts[0]):
        return parse_structure(parts[1], depth + 1)  # "x \in [0, 1)" is the interval
    # "p=5,q=2;p=7,q=2": `;` separates the groups of a comma-separated answer
    seps = (("\\cup", "union"), (";", "list"), (",", "list")) if ";" in s and "," in s else \
        (("\\cup", "union"), (",", "list"), (";", "list"))
    for sep, kind in seps:
        parts = split_top(s, sep)
        if len(parts) > 1:
            if len(parts) > MAX_ITEMS:
                raise expr.GuardError("too many list items")
            return (kind, _items(parts, depth))
    parts = re.split(r"\s+and\s+", s) if " and " in s else [s]
    if len(parts) > 1 and all(p.strip() for p in parts):
        return ("list", [parse_structure(p, depth + 1) for p in parts])
    parts = split_top(s, "=")
    if len(parts) > 1:
        return ("eq", [parse_structure(p, depth + 1) for p in parts])
    rel = _parse_relation(s, depth)
    if rel is not None:
        return rel
    signs = _PM_RE.findall(s)
    if len(signs) == 1 and _outer_bracket(s) is None:  # in a tuple or set, the element carries it
        # one \pm anywhere (`1 \pm \sqrt{19}`, `\frac{-1 \pm \sqrt{13}}{4}`) stands for two values
        first, second = ("+", "-") if signs[0] == "\\pm" else ("-", "+")
        return ("list", [parse_structure(_PM_RE.sub(f" {sign} ", s).strip(), depth + 1)
                         for sign in (first, second)], "pm")
    br = _outer_bracket(s)
    if br is not None:
        opener, inner, closer = br
        items = split_top(inner, ",")
        if len(items) == 1 and opener != "\\{":
            items = split_top(inner, ";")  # "(0;-2;6)": a tuple written with semicolons
        if opener == "\\{":
            if not inner.strip():
                return ("empty",)
            return ("set", _items(items, depth))
        if len(items) >= 2:
            if len(items) > MAX_ITEMS:
                raise expr.GuardError("too many tuple items")
            op = "(" if opener == "\\langle" else opener
            cl = ")" if closer == "\\rangle" else closer
            return ("seq", op, cl, [parse_structure(p, depth + 1) for p in items])
        if opener + closer in ("()", "[]", "{}"):
            return parse_structure(inner, depth + 1)
    if s == "\\emptyset":
        return ("empty",)
    if s in ("\\R", "R"):
        return ("reals",)
    letter = _LETTER_RE.fullmatch(s)
    if letter and s.startswith("("):
        return ("text", letter.group(1).lower())
    if _is_text(s):
        return ("text", " ".join(s.lower().replace("-", " ").split()))
    m = _NUMBER_WORDS_RE.fullmatch(s)
    if m and not any(_VALUE_WORDS_RE.fullmatch(w) for w in m.group(2).split()):
        return ("expr", m.group(1))  # "5 ways", "13 respectively"
    return ("expr", s)


def _set_builder(s: str) -> str | None:
    """`\\{x \\mid 0 < x < 1\\}`, `\\{x : x > 2\\}`, `\\{x \\in \\R | x \\ne 0\\}`: the condition, else None."""
    br = _outer_bracket(s)
    if br is None or br[0] != "\\{":
        return None
    for bar in ("\\mid", "|", ":"):
        parts = _top_split(br[1], bar)
        if parts is not None and len(parts) == 2:
            var = _top_split(parts[0], "\\in")
            if _VARIABLE_RE.fullmatch((var[0] if var else parts[0]).strip()):
                return parts[1]
    return None


def _items(parts: list[str], depth: int) -> list[SNode]:
    """List or set elements; an element `a \\pm b` stands for its two values."""
    out: list[SNode] = []
    for p in parts:
        p = _LEADING_AND_RE.sub("", p)  # "19, 46, and 82": the last item is 82
        if p.strip():
            node = parse_structure(p, depth + 1)
            if node[0] == "eq" and len(node[1]) == 2 and node[1][1][0] == "list" and node[1][1][2:] == ("pm",):
                node = ("list", [("eq", [node[1][0], v]) for v in node[1][1][1]], "pm")  # x = 1 \pm 2
            out.extend(node[1] if node[0] == "list" and node[2:] == ("pm",) else [node])
    return out


def _parse_relation(s: str, depth: int) -> SNode | None:
    pieces = _REL_RE.split(s)
    if len(pieces) < 2:
        return None
    ops = [_REL_CANON[m.group(0)] for m in _REL_RE.finditer(s)]
    parts = [parse_structure(p, depth + 1) for p in pieces]
    if ops and all(o in ("ge", "gt") for o in ops):  # 3 < x is x > 3 read backwards
        ops = [_FLIP[o] for o in reversed(ops)]
        parts = list(reversed(parts))
    return ("rel", tuple(ops), parts)


def prepare(answer: str, gold: bool = False) -> SNode:
    """Clean an extracted answer (or gold) and parse its structure.

    Args:
        answer: the answer text.
        gold: a gold answer may list alternatives with "or" (`(11,7) or (7,11)`): all of them are
            the answer. A prediction that says "or" never gets here (it is a hedge).
    """
    if len(answer) > MAX_ANSWER_CHARS:
        raise expr.GuardError("answer too long")
    s = collapse_thousands(clean_latex(answer))
    if gold and _OR_RE.search(s) and not _is_text(s):
        s = _OR_RE.sub(", ", s)
    bare = strip_units_words(s)
    if bare != s and parse_number(bare) is not None:
        s = bare  # "5 cm" is 5; a unit word is dropped only when a plain number remains
    return parse_structure(s)


# --- comparators ---------------------------------------------------------------------------

def canon(s: str) -> str:
    """Whitespace- and brace-insensitive spelling used for cheap string equality."""
    return s.replace(" ", "").replace("{", "").replace("}", "").lower()


class FastScalar:
    """Scalar equality with strings and Fractions only; returns None when sympy is needed."""

    def __init__(self, tolerance: Fraction = Fraction(0)) -> None:
        self.tolerance = tolerance
        self._values: dict[str, Fraction | None] = {}  # per-check memo, dropped with the object

    def rational(self, s: str) -> Fraction | None:
        """Exact value of a numeric answer, None if not rational on the fast path."""
        if s in self._values:
            return self._values[s]
        value = parse_number(s)
        if value is None:
            try:
                value = expr.eval_rational(expr.parse(s))
            except expr.GuardError:
                raise
            except (expr.ParseError, expr.NotRational, ZeroDivisionError, ValueError, OverflowError):
                value = None
            except RecursionError:
                raise expr.GuardError("expression nested too deeply") from None
        self._values[s] = value
        return value

    def numbers_equal(self, a: Fraction, b: Fraction) -> bool:
        return abs(a - b) <= self.tolerance

    def scalar(self, a: str, b: str) -> bool | None:
        if canon(a) == canon(b):
            return True
        for s in (a, b):  # "3 4" or "1 2" is two numbers side by side, never their product
            if _JUXTAPOSED_RE.search(s) and parse_number(s) is None:
                return False
        if _BASE_SUBSCRIPT_RE.search(a) or _BASE_SUBSCRIPT_RE.search(b):
            return False  # 1011_2 is compared literally (checker.md §3)
        va, vb = self.rational(a), self.rational(b)
        if va is not None and vb is not None:
            return self.numbers_equal(va, vb)
        return None

    def proportional(self, l1: str, r1: str, l2: str, r2: str, positive: bool = False) -> bool | None:
        """Is `l1 = r1` the same equation as `l2 = r2` up to a non-zero factor (a positive one for
        relations, `positive=True`)? Needs sympy."""
        return None


def _and(results: list[bool | None]) -> bool | None:
    if any(r is False for r in results):
        return False
    return None if any(r is None for r in results) else True


def _multiset_equal(gs: list[SNode], ps: list[SNode], cmp: FastScalar) -> bool | None:
    if len(gs) != len(ps):
        return False
    unmatched = list(range(len(ps)))
    undecided = False
    for g in gs:
        for k, j in enumerate(unmatched):
            r = equal(g, ps[j], cmp)
            if r is True:
                del unmatched[k]
                break
            if r is None:
                undecided = True
        else:
            return None if undecided else False
    return True


def _is_bare_lhs(node: SNode) -> bool:
    """The left side of an assignment rather than of an equation: a name (`x`, `f(2)`, `AB`,
    `|AB|`, `V_1:V_2`, `\\frac{NO}{BO}`) or a tuple of names (`(p, q)`). `x + z = 1` is an equation."""
    if node[0] == "text":
        return True
    if node[0] == "seq":
        return node[1] == "(" and all(_is_bare_lhs(item) for item in node[3])
    if node[0] != "expr":
        return False
    return _is_name(node[1])


def _unwrap(node: SNode) -> SNode:
    while node[0] in ("list", "set") and len(node[1]) == 1:
        node = node[1][0]
    return node


def _is_constant(node: SNode) -> bool:
    """An expression without unknowns (`2 + 3`, `\\frac{1}{2}\\cdot 4`, `2\\pi`)."""
    return node[0] == "expr" and re.search(r"[A-Za-z]", re.sub(r"\\[a-zA-Z]+", "", node[1])) is None \
        and re.search(r"\d", node[1]) is not None


def _is_variable(node: SNode) -> bool:
    return node[0] in ("expr", "text") and _VARIABLE_RE.fullmatch(node[1].strip()) is not None


def _abs_variable(node: SNode) -> bool:
    """`|x|`: the absolute value of one variable."""
    s = node[1].strip() if node[0] in ("expr", "text") else ""
    return len(s) > 2 and s[0] == s[-1] == "|" and _VARIABLE_RE.fullmatch(s[1:-1].strip()) is not None


def _negated(node: SNode) -> SNode:
    return ("expr", f"-({node[1]})")


def rel_as_interval(node: SNode) -> SNode | None:
    """`0 < f(x) < 1` -> (0, 1); `x \\le 2` -> (-oo, 2]; `x > 3` -> (3, oo); `|x| < 2` -> (-2, 2);
    `1 \\le |z| \\le 2` -> [-2, -1] U [1, 2] (bounds of |x| read as non-negative); else None."""
    ops, parts = node[1], node[2]
    if not ops or any(o not in ("lt", "le") for o in ops):
        return None
    left = "(" if ops[0] == "lt" else "["
    right = ")" if ops[-1] == "lt" else "]"
    mirror = {"(": ")", "[": "]", ")": "(", "]": "["}
    if len(parts) == 3 and _abs_variable(parts[1]) and not any(_is_variable(p) for p in (parts[0], parts[2])):
        a, b = parts[0], parts[2]
        return ("union", [("seq", mirror[right], mirror[left], [_negated(b), _negated(a)]),
                          ("seq", left, right, [a, b])])
    if len(parts) == 2 and _abs_variable(parts[0]) and parts[1][0] == "expr":
        return ("seq", mirror[right], right, [_negated(parts[1]), parts[1]])  # |x| < b
    if len(parts) == 2 and _abs_variable(parts[1]) and parts[0][0] == "expr":
        a = parts[0]  # a < |x|
        return ("union", [("seq", "(", mirror[left], [("expr", "-\\infty"), _negated(a)]),
                          ("seq", left, ")", [a, ("expr", "\\infty")])])
    if len(parts) == 3 and _is_variable(parts[1]) and not _is_variable(parts[0]) and not _is_variable(parts[2]):
        return ("seq", left, right, [parts[0], parts[2]])
    if len(parts) == 2:
        a, b = parts
        if _is_variable(a) and not _is_variable(b):
            return ("seq", "(", right, [("expr", "-\\infty"), b])
        if _is_variable(b) and not _is_variable(a):
            return ("seq", left, ")", [a, ("expr", "\\infty")])
    return None


def _as_union(node: SNode) -> SNode | None:
    """A union node, or a list of one-variable inequalities as the union of their intervals."""
    if node[0] == "union":
        return node
    items = [node] if node[0] == "rel" else node[1] if node[0] in ("list", "set") else []
    if items and all(item[0] == "rel" for item in items):
        intervals = [rel_as_interval(item) for item in items]
        if all(i is not None for i in intervals):
            return ("union", [part for i in intervals for part in (i[1] if i[0] == "union" else [i])])
    return None


def _assignments_as_tuple(node: SNode) -> SNode | None:
    """`p = 5, q = 2` (a list of assignments to distinct names) -> the tuple (5, 2), in order."""
    if node[0] != "list" or len(node[1]) < 2:
        return None
    values, names = [], set()
    for item in node[1]:
        if item[0] != "eq" or len(item[1]) != 2 or not _is_bare_lhs(item[1][0]) or item[1][0][0] != "expr":
            return None
        names.add(canon(item[1][0][1]))
        values.append(item[1][1])
    return ("seq", "(", ")", values) if len(names) == len(values) else None


def _relations_equal(g: SNode, p: SNode, cmp: FastScalar) -> bool | None:
    gops, pops, gp, pp = g[1], p[1], g[2], p[2]
    if len(gops) != len(pops):
        return False
    if gops == ("ne",) and pops == ("ne",):  # x != 3 is 3 != x
        r = _and([equal(gp[0], pp[0], cmp), equal(gp[1], pp[1], cmp)])
        return r if r is not False else _and([equal(gp[0], pp[1], cmp), equal(gp[1], pp[0], cmp)])
    if gops != pops:
        return False
    r = _and([equal(a, b, cmp) for a, b in zip(gp, pp)])
    if r is True or len(gp) != 2 or not all(n[0] == "expr" for n in gp + pp):
        return r
    # the same relation scaled by a positive factor: -x < -1 (read as -1 < -x) is x < 1
    scaled = cmp.proportional(gp[0][1], gp[1][1], pp[0][1], pp[1][1], positive=True)
    if scaled is True:
        return True
    return None if scaled is None or r is None else False


def equal(g: SNode, p: SNode, cmp: FastScalar) -> bool | None:
    """Three-valued structural equality of gold `g` and prediction `p`."""
    g, p = _unwrap(g), _unwrap(p)
    tg, tp = g[0], p[0]
    if tg == "eq" and tp == "eq":
        gl, pl = g[1], p[1]
        first = equal(gl[0], pl[0], cmp)
        last = equal(gl[-1], pl[-1], cmp)
        if first is True and last is True:
            return True
        if len(gl) == 2 and len(pl) == 2 and all(n[0] == "expr" for n in gl + pl):
            return cmp.proportional(gl[0][1], gl[1][1], pl[0][1], pl[1][1])
        return _and([first, last])
    if tg == "eq":
        return equal(g[1][-1], p, cmp) if _is_bare_lhs(g[1][0]) else False
    if tp == "eq":
        # "x = 2 + 3 = 5" means 5; "y = 2x + 3" matches "2x + 3"; "\frac{1}{2} + \frac{1}{3} = \frac{5}{6}"
        # (a computation with no unknowns) means 5/6; "x + z = 1" and "7 = 11a + c" are equations
        if _is_bare_lhs(p[1][0]) or len(p[1]) >= 3 or (_is_constant(p[1][0]) and _is_constant(p[1][-1])):
            return equal(g, p[1][-1], cmp)
        return False
    if tg == "seq" and tp in ("list", "set"):
        # a point written without its parentheses ("1, 3", `{1, 3}`, "p = 1, q = 3") in order
        as_tuple = _assignments_as_tuple(p)
        if as_tuple is not None:
            return equal(g, as_tuple, cmp)
        if tp == "list" and g[1:3] == ("(", ")") and len(g[3]) == len(p[1]):
            return _and([equal(a, b, cmp) for a, b in zip(g[3], p[1])])
        return False
    if tp == "seq" and tg == "list":
        as_tuple = _assignments_as_tuple(g)
        return equal(as_tuple, p, cmp) if as_tuple is not None else False
    if "union" in (tg, tp) and tg != tp:
        # "x < -1 or x > 1" (a list of inequalities) is the union (-oo, -1) U (1, oo)
        gu, pu = _as_union(g), _as_union(p)
        if gu is None or pu is None:
            return False
        return _multiset_equal(gu[1], pu[1], cmp)
    if tg in ("list", "set") and tp in ("list", "set"):
        return _multiset_equal(g[1], p[1], cmp)
    if tg == "union" and tp == "union":
        return _multiset_equal(g[1], p[1], cmp)
    if tg == "seq" and tp == "seq":
        if g[1] != p[1] or g[2] != p[2] or len(g[3]) != len(p[3]):
            return False
        return _and([equal(a, b, cmp) for a, b in zip(g[3], p[3])])
    if {tg, tp} == {"rel", "seq"} or {tg, tp} == {"rel", "reals"}:
        # an inequality in one variable and the interval it describes
        rel = g if tg == "rel" else p
        other = p if tg == "rel" else g
        interval = rel_as_interval(rel)
        if interval is None:
            return False
        return equal(interval, other, cmp) if tg == "rel" else equal(other, interval, cmp)
    if {tg, tp} == {"reals", "seq"}:
        seq = g if tg == "seq" else p
        if seq[1:3] != ("(", ")") or len(seq[3]) != 2:
            return False
        return _and([equal(seq[3][0], ("expr", "-\\infty"), cmp), equal(seq[3][1], ("expr", "\\infty"), cmp)])
    if {tg, tp} == {"matrix", "expr"} and "\\begin{" in (p[1] if tp == "expr" else g[1]):
        # matrix arithmetic ("A + B", "A B" written out): sympy evaluates it in the worker
        return cmp.scalar(g[2] if tg == "matrix" else g[1], p[2] if tp == "matrix" else p[1])
    if tg == "matrix" and tp == "matrix":
        if len(g[1]) != len(p[1]) or any(len(a) != len(b) for a, b in zip(g[1], p[1])):
            return False
        return _and([equal(a, b, cmp) for ra, rb in zip(g[1], p[1]) for a, b in zip(ra, rb)])
    if tg == "rel" and tp == "rel":
        return _relations_equal(g, p, cmp)
    if tg == tp and tg in ("empty", "reals"):
        return True
    if tg == "text" or tp == "text":
        a = g[1] if tg in ("text", "expr") else None
        b = p[1] if tp in ("text", "expr") else None
        if a is None or b is None:
            return False
        return canon(a).strip("()") == canon(b).strip("()")
    if tg == "expr" and tp == "expr":
        return cmp.scalar(g[1], p[1])
    return False
