"""A small, safe parser for answer expressions, with size guards and exact evaluation.

Why it exists:
- `sympy.parse_expr`/`sympify` call Python `eval` on their input (`checker.md` §6), so model text
  must never reach them. This parser tokenises with one regex, builds a tiny tuple AST, and never
  evaluates strings.
- Speed: the answers that dominate real data (`14/3`, `\\frac{3}{4}`, `2^{10}`, `-0.5`, `3\\sqrt{2}`)
  parse here in tens of microseconds, whereas the ANTLR LaTeX grammar takes milliseconds. Rational
  values are evaluated with `Fraction` without importing sympy at all.

Scope: plain arithmetic (`+ - * / ^ ** !`, parentheses and braces, implicit multiplication),
`\\frac`, `\\sqrt[n]{}`, `\\pi`, `\\infty`, `i`, single-letter variables and a few named functions.
Anything else raises `ParseError`, and the caller falls back to `latex2sympy2_extended`
(in the worker process, under a deadline).

Guards (`checker.md` §6), raised as `GuardError` before any big computation:
- at most `MAX_DEPTH` nesting levels and `MAX_TOKENS` tokens;
- exponent towers of at most 2 levels; |integer exponent| <= `MAX_EXPONENT` unless the base is
  0 or ±1; results of at most `MAX_RESULT_BITS` bits;
- factorial arguments <= `MAX_FACTORIAL`.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction
from typing import Any

MAX_DEPTH = 50
MAX_TOKENS = 400
MAX_EXPONENT = 10_000
MAX_FACTORIAL = 10_000
MAX_RESULT_BITS = 200_000
MAX_LITERAL_DIGITS = 1000

Node = tuple[Any, ...]
"""AST node: ('n', Fraction) | ('v', name) | ('c', 'pi'|'i'|'oo'|'e') | ('+', [nodes]) |
('*', [nodes]) | ('/', a, b) | ('^', base, exp) | ('neg', a) | ('!', a) | ('sqrt', a, index|None)
| ('f', name, a)."""


class ParseError(ValueError):
    """The text is outside this parser's grammar (the caller may try another parser)."""


class GuardError(ValueError):
    """The expression is too large or too deep to evaluate safely; the answer is rejected."""


_TOKEN_RE = re.compile(
    r"\s*(?:(?P<num>\d+(?:\.\d*)?|\.\d+)|(?P<cmd>\\[a-zA-Z]+)|(?P<op>\*\*|\\[{}]|[-+*/^!(){}\[\],|])"
    r"|(?P<word>[a-zA-Z]+))"
)
_FUNCS = {"sin", "cos", "tan", "sec", "csc", "cot", "arcsin", "arccos", "arctan", "sinh", "cosh",
          "tanh", "log", "ln", "exp"}
_CONSTS = {"pi": "pi", "infty": "oo", "infinity": "oo"}
_MUL_CMDS = {"\\cdot", "\\times", "\\ast"}
_DIV_CMDS = {"\\div"}


def tokenize(s: str) -> list[tuple[str, str]]:
    """Split into (kind, text) tokens; raises ParseError on any character outside the grammar."""
    tokens: list[tuple[str, str]] = []
    pos, n = 0, len(s)
    while pos < n:
        m = _TOKEN_RE.match(s, pos)
        if m is None or m.end() == pos:
            if s[pos:].strip() == "":
                break
            raise ParseError(f"unexpected character {s[pos]!r}")
        pos = m.end()
        kind = m.lastgroup
        if kind is None:
            continue
        text = m.group(kind)
        if kind == "word":
            low = text
            if low in _FUNCS or low in ("pi", "sqrt", "frac"):
                tokens.append(("cmd", "\\" + low))
            elif len(text) <= 2:  # "xy" is x*y, as in LaTeX
                tokens.extend(("var", c) for c in text)
            else:  # a word ("dollars", "and"): not an expression this parser should guess at
                raise ParseError(f"word {text!r}")
        else:
            tokens.append((kind, text))
        if len(tokens) > MAX_TOKENS:
            raise GuardError("expression has too many tokens")
    return tokens


class _Parser:
    """Recursive descent over the token list; depth-limited so deep nesting is a GuardError."""

    def __init__(self, tokens: list[tuple[str, str]]) -> None:
        self.toks = tokens
        self.i = 0
        self.depth = 0

    def peek(self) -> tuple[str, str] | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self, text: str | None = None) -> tuple[str, str]:
        tok = self.peek()
        if tok is None or (text is not None and tok[1] != text):
            raise ParseError(f"expected {text!r}")
        self.i += 1
        return tok

    def enter(self) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise GuardError("expression nested too deeply")

    def parse(self) -> Node:
        node = self.expr()
        extra = self.peek()
        if extra is not None:
            raise ParseError(f"unexpected token {extra[1]!r}")
        return node

    def expr(self) -> Node:
        self.enter()
        terms = [self.signed()]
        while (tok := self.peek()) is not None and tok[1] in ("+", "-"):
            self.i += 1
            term = self.signed()
            terms.append(("neg", term) if tok[1] == "-" else term)
        self.depth -= 1
        return terms[0] if len(terms) == 1 else ("+", terms)

    def signed(self) -> Node:
        tok = self.peek()
        if tok is not None and tok[1] in ("+", "-"):
            self.i += 1
            self.enter()
            inner = self.signed()
            self.depth -= 1
            return ("neg", inner) if tok[1] == "-" else inner
        return self.term()

    def term(self) -> Node:
        node = self.power()
        while (tok := self.peek()) is not None:
            if tok[1] in ("*",) or tok[1] in _MUL_CMDS:
                self.i += 1
                node = _mul(node, self.power())
            elif tok[1] == "/" or tok[1] in _DIV_CMDS:
                self.i += 1
                node = ("/", node, self.power())
            elif self._starts_atom(tok):
                if node[0] == "n" and tok[0] == "num":
                    raise ParseError("two numbers side by side")  # "3 4" is not 12
                rhs = self.power()
                # 2\frac{1}{2} is the mixed number 5/2, never a product (checker.md §2)
                if (node[0] == "n" and node[1].denominator == 1 and len(rhs) == 4
                        and rhs[1][0] == "n" and rhs[2][0] == "n"
                        and rhs[1][1].denominator == 1 and 0 <= rhs[1][1] < rhs[2][1]):
                    node = ("+", [node, ("/", rhs[1], rhs[2])])
                else:
                    node = _mul(node, rhs)
            else:
                break
        return node

    @staticmethod
    def _starts_atom(tok: tuple[str, str]) -> bool:
        kind, text = tok
        if kind in ("num", "var"):
            return True
        if kind == "cmd":
            return text not in _MUL_CMDS and text not in _DIV_CMDS
        return text in ("(", "{", "[")

    def power(self) -> Node:
        base = self.postfix()
        tok = self.peek()
        if tok is not None and tok[1] in ("^", "**"):
            self.i += 1
            self.enter()
            exp = self.exponent()
            self.depth -= 1
            return ("^", base, exp)
        return base

    def exponent(self) -> Node:
        tok = self.peek()
        if tok is None:
            raise ParseError("missing exponent")
        if tok[1] in ("-", "+"):
            self.i += 1
            inner = self.exponent()
            return ("neg", inner) if tok[1] == "-" else inner
        return self.power()  # right-associative: 2^3^2 = 2^(3^2)

    def postfix(self) -> Node:
        node = self.atom()
        while (tok := self.peek()) is not None and tok[1] == "!":
            self.i += 1
            node = ("!", node)
        return node

    def group(self, close: str) -> Node:
        self.enter()
        node = self.expr()
        self.take(close)
        self.depth -= 1
        return node

    def atom(self) -> Node:
        tok = self.peek()
        if tok is None:
            raise ParseError("unexpected end")
        kind, text = tok
        self.i += 1
        if kind == "num":
            if len(text) > MAX_LITERAL_DIGITS:
                raise GuardError("number literal too long")
            return ("n", Fraction(text))
        if kind == "var":
            if text == "i":
                return ("c", "i")
            return ("v", text)
        if text == "(":
            return self.group(")")
        if text == "{":
            return self.group("}")
        if text == "[":
            return self.group("]")
        if kind == "cmd":
            name = text[1:]
            if name in _CONSTS:
                return ("c", _CONSTS[name])
            if name == "frac":
                self.take("{")
                num = self.group("}")
                self.take("{")
                den = self.group("}")
                return ("/", num, den, "frac")
            if name == "sqrt":
                index = None
                if (t := self.peek()) is not None and t[1] == "[":
                    self.i += 1
                    index = self.group("]")
                nxt = self.peek()
                if nxt is not None and nxt[1] == "{":
                    self.i += 1
                    arg = self.group("}")
                elif nxt is not None and nxt[1] == "(":
                    self.i += 1
                    arg = self.group(")")
                else:
                    arg = self.atom()
                return ("sqrt", arg, index)
            if name in _FUNCS:
                nxt = self.peek()
                if nxt is None:
                    raise ParseError("function without argument")
                if nxt[1] in ("(", "{"):
                    self.i += 1
                    arg = self.group(")" if nxt[1] == "(" else "}")
                else:
                    arg = self.power()
                return ("f", name, arg)
        raise ParseError(f"unsupported token {text!r}")


def _mul(a: Node, b: Node) -> Node:
    if a[0] == "*":
        return ("*", a[1] + [b])
    return ("*", [a, b])


def parse(s: str) -> Node:
    """Parse `s` into an AST; raises ParseError (outside the grammar) or GuardError (too big)."""
    return _Parser(tokenize(s)).parse()


# --- exact rational evaluation (no sympy) --------------------------------------------------

class NotRational(Exception):
    """The value is not a rational number computable on the fast path (symbol, pi, sqrt 2, …)."""


def _iroot(n: int, k: int) -> int | None:
    """Exact integer k-th root of n >= 0, or None."""
    if n < 0:
        return None
    r = round(n ** (1.0 / k)) if n.bit_length() < 1000 else math.isqrt(n) if k == 2 else None
    if r is None:
        return None
    for cand in (r - 1, r, r + 1):
        if cand >= 0 and cand ** k == n:
            return cand
    return None


def _check_pow(base: Fraction, exp: int) -> None:
    if base in (0, 1, -1):
        return
    if abs(exp) > MAX_EXPONENT:
        raise GuardError("exponent too large")
    bits = max(base.numerator.bit_length(), base.denominator.bit_length())
    if bits * abs(exp) > MAX_RESULT_BITS:
        raise GuardError("power result too large")


def eval_rational(node: Node, depth: int = 0) -> Fraction:
    """Evaluate exactly; raises NotRational if the value needs sympy, GuardError if too big."""
    if depth > MAX_DEPTH * 2:
        raise GuardError("expression nested too deeply")
    tag = node[0]
    if tag == "n":
        return node[1]
    if tag == "neg":
        return -eval_rational(node[1], depth + 1)
    if tag == "+":
        return sum((eval_rational(t, depth + 1) for t in node[1]), Fraction(0))
    if tag == "*":
        out = Fraction(1)
        for f in node[1]:
            out *= eval_rational(f, depth + 1)
            if max(out.numerator.bit_length(), out.denominator.bit_length()) > MAX_RESULT_BITS:
                raise GuardError("product too large")
        return out
    if tag == "/":
        num, den = eval_rational(node[1], depth + 1), eval_rational(node[2], depth + 1)
        if den == 0:
            raise NotRational("division by zero")
        return num / den
    if tag == "^":
        if node[2][0] == "^" and node[2][2][0] == "^":
            raise GuardError("power tower deeper than 2 levels")
        base = eval_rational(node[1], depth + 1)
        exp = eval_rational(node[2], depth + 1)
        if exp.denominator == 1:
            e = int(exp)
            _check_pow(base, e)
            if base == 0 and e < 0:
                raise NotRational("division by zero")
            return base ** e
        # rational exponent: exact only for perfect powers (4^{1/2} = 2, 8^{2/3} = 4)
        if base < 0 or exp.denominator > 64:
            raise NotRational("irrational power")
        rn, rd = _iroot(base.numerator, exp.denominator), _iroot(base.denominator, exp.denominator)
        if rn is None or rd is None:
            raise NotRational("irrational power")
        root = Fraction(rn, rd)
        _check_pow(root, exp.numerator)
        return root ** exp.numerator
    if tag == "!":
        arg = eval_rational(node[1], depth + 1)
        if arg.denominator != 1 or arg < 0:
            raise NotRational("factorial of a non-integer")
        if arg > MAX_FACTORIAL:
            raise GuardError("factorial argument too large")
        return Fraction(math.factorial(int(arg)))
    if tag == "sqrt":
        index = Fraction(2) if node[2] is None else eval_rational(node[2], depth + 1)
        if index.denominator != 1 or not 1 <= index <= 64:
            raise NotRational("unusual root")
        k = int(index)
        arg = eval_rational(node[1], depth + 1)
        if arg < 0:
            raise NotRational("root of a negative number")
        rn, rd = _iroot(arg.numerator, k), _iroot(arg.denominator, k)
        if rn is None or rd is None:
            raise NotRational("irrational root")
        return Fraction(rn, rd)
    raise NotRational(f"non-rational node {tag}")


def check_guards(node: Node, depth: int = 0, pow_level: int = 0) -> None:
    """Walk the AST and raise GuardError for towers, huge literal exponents and factorials.

    Used before converting to sympy, because sympy evaluates `9^(9^9)` eagerly and cannot be
    interrupted inside the bigint multiplication.
    """
    if depth > MAX_DEPTH * 2:
        raise GuardError("expression nested too deeply")
    tag = node[0]
    if tag == "^":
        if pow_level >= 2:
            raise GuardError("power tower deeper than 2 levels")
        check_guards(node[1], depth + 1, pow_level)
        check_guards(node[2], depth + 1, pow_level + 1)
        try:
            exp = eval_rational(node[2])
            base = eval_rational(node[1])
        except NotRational:
            return
        if exp.denominator == 1:
            _check_pow(base, int(exp))
        return
    if tag == "!":
        check_guards(node[1], depth + 1, pow_level)
        try:
            arg = eval_rational(node[1])
        except NotRational:
            if _contains(node[1], "^") or _contains(node[1], "!"):
                raise GuardError("factorial of a power") from None
            return
        if arg > MAX_FACTORIAL:
            raise GuardError("factorial argument too large")
        return
    for child in node[1:]:
        if isinstance(child, tuple):
            check_guards(child, depth + 1, pow_level)
        elif isinstance(child, list):
            for c in child:
                check_guards(c, depth + 1, pow_level)


def _contains(node: Node, tag: str) -> bool:
    if node[0] == tag:
        return True
    for child in node[1:]:
        if isinstance(child, tuple) and _contains(child, tag):
            return True
        if isinstance(child, list) and any(_contains(c, tag) for c in child):
            return True
    return False


def has_free_symbols(node: Node) -> bool:
    """True if a variable (other than the constants pi, i, oo) occurs."""
    return _contains(node, "v")


def to_sympy(node: Node) -> Any:
    """Build a sympy object directly from the AST (no string parsing). Call check_guards first."""
    import sympy  # imported lazily: only the worker process pays for sympy

    tag = node[0]
    if tag == "n":
        return sympy.Rational(node[1].numerator, node[1].denominator)
    if tag == "v":
        return sympy.Symbol(node[1])
    if tag == "c":
        return {"pi": sympy.pi, "i": sympy.I, "oo": sympy.oo, "e": sympy.E}[node[1]]
    if tag == "neg":
        return -to_sympy(node[1])
    if tag == "+":
        return sympy.Add(*[to_sympy(t) for t in node[1]])
    if tag == "*":
        return sympy.Mul(*[to_sympy(t) for t in node[1]])
    if tag == "/":
        return sympy.Mul(to_sympy(node[1]), sympy.Pow(to_sympy(node[2]), -1))
    if tag == "^":
        return sympy.Pow(to_sympy(node[1]), to_sympy(node[2]))
    if tag == "!":
        return sympy.factorial(to_sympy(node[1]))
    if tag == "sqrt":
        arg = to_sympy(node[1])
        return sympy.sqrt(arg) if node[2] is None else sympy.root(arg, to_sympy(node[2]))
    if tag == "f":
        fname = str(node[1])
        fname = {"ln": "log", "arcsin": "asin", "arccos": "acos", "arctan": "atan"}.get(fname, fname)
        return getattr(sympy, fname)(to_sympy(node[2]))
    raise ParseError(f"unknown node {tag}")
