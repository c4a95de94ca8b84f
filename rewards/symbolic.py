"""The sympy comparator, used only inside worker processes (under a wall-clock deadline).

Conversion: `expr.py`'s AST -> sympy objects directly (no strings evaluated). LaTeX outside that
grammar goes to `latex2sympy2_extended` (an ANTLR grammar that builds sympy objects without
`eval`), after `guard_latex`, because sympy evaluates integer powers and factorials eagerly and a
C-level bigint multiplication cannot be interrupted except by killing the process.

Comparison (`checker.md` §3), cheapest first, never `simplify` unless needed:
1. structural equality of the canonical sympy objects (`sqrt(12)` is `2*sqrt(3)` already);
2. constants: exact when both are rational; otherwise a relative difference below 1e-25 at
   50 significant digits (1/2004! vs 1/2006! differ; 1/sqrt(3) vs sqrt(3)/3 match);
3. with free symbols: the difference evaluated at three fixed rational points (polynomial
   identity testing); inconclusive evaluations fall back to `simplify(a - b) == 0`.
Decimals are exact rationals: latex2sympy's Floats are replaced by the Rational of their printed
digits, so 0.125 = 1/8 but 0.33 != 1/3 and 6.28 != 2*pi.
"""

from __future__ import annotations

import re
from fractions import Fraction
from typing import Any

import sympy
from latex2sympy2_extended.latex2sympy2 import ConversionConfig, latex2sympy

from rewards import expr
from rewards.equivalence import FastScalar

_L2S_CONFIG = ConversionConfig(interpret_as_mixed_fractions=True, interpret_simple_eq_as_assignment=False,
                               lowercase_symbols=False)
_CALCULUS_RE = re.compile(r"\\(?:int|iint|oint|sum|prod|lim|idotsint)(?![a-zA-Z])")
_BIG_EXP_RE = re.compile(r"\^\s*\{?\s*\(?\s*(\d{5,})")
_BIG_FACT_RE = re.compile(r"(\d{5,})\s*!|[)}]\s*!")
_LONG_DIGITS_RE = re.compile(r"\d{1001,}")
_SAMPLE_POINTS = (Fraction(7, 13), Fraction(-11, 17), Fraction(29, 19))
_REL_TOL = sympy.Float("1e-25", 50)


def _nesting(s: str) -> int:
    depth = best = 0
    for c in s:
        if c in "({[":
            depth += 1
            best = max(best, depth)
        elif c in ")}]":
            depth -= 1
    return best


def _exponent_depth(s: str) -> int:
    """How deep `^` groups nest in LaTeX: `a^{b^{c}}` is 2."""
    best, stack, depth, pending = 0, [], 0, False
    for c in s:
        if c == "^":
            pending = True
            continue
        if c == "{":
            stack.append(pending)
            if pending:
                depth += 1
                best = max(best, depth)
        elif c == "}":
            if stack and stack.pop():
                depth -= 1
        elif pending and not c.isspace():
            best = max(best, depth + 1)
        if not c.isspace():
            pending = False
    return best


def guard_latex(s: str) -> None:
    """Refuse LaTeX that could make sympy evaluate something huge (checker.md §6)."""
    if len(s) > 1000:
        raise expr.GuardError("answer too long")
    if _nesting(s) > expr.MAX_DEPTH:
        raise expr.GuardError("answer nested too deeply")
    if _exponent_depth(s) > 2:
        raise expr.GuardError("power tower deeper than 2 levels")
    if _BIG_EXP_RE.search(s) or _BIG_FACT_RE.search(s) or _LONG_DIGITS_RE.search(s):
        raise expr.GuardError("huge exponent, factorial or number")
    if _CALCULUS_RE.search(s):
        raise expr.GuardError("unevaluated integral, sum, product or limit")


def _exact_floats(e: Any) -> Any:
    floats = e.atoms(sympy.Float) if isinstance(e, sympy.Basic) else set()
    if not floats:
        return e
    return e.xreplace({f: sympy.Rational(str(f)) for f in floats})


def to_sympy(s: str) -> Any:
    """Sympy object for an expression string; raises expr.GuardError or ValueError."""
    try:
        node = expr.parse(s)
    except expr.ParseError:
        node = None
    if node is not None:
        expr.check_guards(node)
        return expr.to_sympy(node)
    guard_latex(s)
    try:
        out = latex2sympy(s, normalization_config=None, conversion_config=_L2S_CONFIG)
    except expr.GuardError:
        raise
    except Exception as e:  # the ANTLR grammar raises plain Exception on syntax errors
        raise ValueError(f"unparsable answer: {str(e).splitlines()[0][:100] if str(e) else type(e).__name__}") from None
    if isinstance(out, sympy.Basic):
        out = out.xreplace({sympy.Symbol("i"): sympy.I}) if sympy.Symbol("i") in out.free_symbols else out
    return _exact_floats(out)


def _finite_number(v: Any) -> bool:
    return isinstance(v, sympy.Number) or (getattr(v, "is_number", False) and v.is_finite)


def sympy_equal(a: Any, b: Any) -> bool:
    """Exact-intent equality of two sympy objects (see the module docstring)."""
    for e in (a, b):  # 12/0 or 0/0 is never an answer, and zoo == zoo must not make "12:00" = "1:00"
        if isinstance(e, sympy.Basic) and e.has(sympy.zoo, sympy.nan):
            return False
    if a == b:
        return True
    if not (isinstance(a, sympy.Expr) and isinstance(b, sympy.Expr)):
        try:
            return bool(a.equals(b)) if hasattr(a, "equals") else False
        except Exception:
            return False
    if a.is_Rational and b.is_Rational:
        return False
    if a.has(sympy.oo, -sympy.oo) or b.has(sympy.oo, -sympy.oo):
        return False  # infinities only equal when structurally equal
    diff = a - b
    free = diff.free_symbols
    if not free:
        va, vb, vd = a.evalf(50), b.evalf(50), diff.evalf(50)
        if not (_finite_number(va) and _finite_number(vb) and _finite_number(vd)):
            return sympy.simplify(diff) == 0
        scale = max(abs(va), abs(vb))
        if scale == 0:
            return True
        return bool(abs(vd) <= _REL_TOL * scale)
    symbols = sorted(free, key=lambda s: s.name)
    decided = 0
    for point in _SAMPLE_POINTS:
        subs = {sym: sympy.Rational(point.numerator + j, point.denominator) for j, sym in enumerate(symbols)}
        va, vd = a.subs(subs).evalf(30), diff.subs(subs).evalf(30)
        if not (_finite_number(va) and _finite_number(vd)):
            continue
        decided += 1
        if abs(vd) > sympy.Float("1e-20", 30) * max(1, abs(va)):
            return False
    if decided >= 2:
        return True
    return sympy.simplify(diff) == 0


class SympyScalar(FastScalar):
    """Fast comparator first; sympy for whatever it leaves undecided."""

    def scalar(self, a: str, b: str) -> bool | None:
        fast = super().scalar(a, b)
        if fast is not None:
            return fast
        try:
            ea, eb = to_sympy(a), to_sympy(b)
        except expr.GuardError:
            raise
        except ValueError:
            return False  # one side cannot be read as mathematics: not equal
        if self.tolerance and isinstance(ea, sympy.Expr) and isinstance(eb, sympy.Expr) \
                and ea.is_number and eb.is_number:
            try:
                return bool(abs(ea.evalf(30) - eb.evalf(30)) <= sympy.Rational(self.tolerance.numerator,
                                                                                self.tolerance.denominator))
            except TypeError:
                return False
        return sympy_equal(ea, eb)

    def proportional(self, l1: str, r1: str, l2: str, r2: str, positive: bool = False) -> bool | None:
        try:
            d1 = to_sympy(l1) - to_sympy(r1)
            d2 = to_sympy(l2) - to_sympy(r2)
        except expr.GuardError:
            raise
        except (ValueError, TypeError):
            return False
        if d2 == 0 or d1 == 0:
            return d1 == d2
        ratio = sympy.simplify(d1 / d2)
        if not (ratio.is_number and ratio != 0 and ratio.is_finite):
            return False
        return bool(ratio.is_positive) if positive else True
