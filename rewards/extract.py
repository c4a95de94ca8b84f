"""Find the answer a completion *commits to* (`checker.md` §1).

Markers, all case-insensitive, and the **last** one in the text wins (so a later "The answer is
X" overrides an earlier `\\boxed{Y}`, and a self-correction counts):
- ReFT's `Therefore, the answer is: X`, and "The answer is X", "Final answer: X", Minerva's
  "The final answer is X. I hope it is correct.", `**Answer:** X`, `Answer:\\nX`;
- GSM8K's `#### X` (also `####72`, `#### $36`, `#### 1,250`);
- the last `\\boxed{…}` / `\\fbox{…}` with nested braces, and `\\boxed 5`. Boxes joined by "and",
  ",", `\\quad \\text{and} \\quad`, `\\) and \\(`, a label (`y = \\boxed{3}`) or a part label form one
  list answer (`docs/checker.md`, issue 20);
- "Answer $9$" at the start of a line, and "$x \\le 2$ is our answer".
Scoping: text after the last `</think>` (an unclosed `<think>` means no answer), and inside the last
`<answer>…</answer>` when present. A prompt echoed up to `Answer reasoning:` is cut off.

The span after a phrase runs to the end of its sentence (a `.` inside `$…$` or braces is not an end);
several math spans in it joined by "and" or "," are one answer, an explanation after the first span
is dropped, "The largest $n$ is 34" gives 34, and a prose sentence with one number gives that number.

Commitment rules: a hedge gives no answer, never its first or last candidate: "or", "maybe",
"possibly", "perhaps", "either", "between", "/" or `\\vee` between candidates (also across math
delimiters and boxes), "not" between boxes, an alternative right after the answer ("(or possibly
15)", ". Or maybe 13."), or a bare second number ("12 (13)", "12; 13"). One variable's statements
joined by "or" ("x = 2 or x = 3", "x < -1 or x > 1") are a solution set, not a hedge. A code-like
answer (`lambda`, dunder names, `import`, `open(`) gives no answer. The last-number fallback
(GSM8K/SVAMP-style datasets, configurable) applies only when no marker exists and the text ends like
a finished sentence, so a truncated completion whose last number is an intermediate one is not
credited; a number glued into a word (`B2`, `AZYUK2A`) is never taken.

All scans are single regex passes or bounded brace matching: linear in the text length.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from rewards.normalize import (
    GLUED_SUFFIXES,
    loose_numbers,
    unwrap_text_commands,
)

MAX_COMPLETION_CHARS = 200_000
"""Longer completions are cut to their last this-many characters (keeps every check linear)."""

MAX_SPAN_CHARS = 1000
MAX_BOXES = 20

_PHRASE_RE = re.compile(
    r"\b(?:correct|right)\s+(?:option|choice)\s*(?:is|:)\s*:?|"
    r"(?:final\s+answer|\banswer)\s*(?:to\s+(?:the|this)\s+(?:question|problem)\s+)?"
    r"(?:\*\*)?\s*(?:is|:|=|would\s+be|will\s+be|should\s+be)\s*(?:\*\*)?\s*:?|"
    # a line that starts "Answer" and goes straight into math: "Answer $9$", "Answer \\[ 9 \\]"
    r"(?:^|(?<=\n))[ \t*#]*answer(?:\*\*)?(?=[ \t]*(?:\$|\\\(|\\\[))",
    re.I,
)
# "$x \le 2$ is our answer": the math right before the statement is the answer
_TRAILING_PHRASE_RE = re.compile(r"[ \t]*(?:is|are)\s+(?:our|the|my)\s+(?:final\s+)?answers?\b", re.I)
_HASH_RE = re.compile(r"####")
_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![a-zA-Z])")
_HEDGE_RE = re.compile(r"\b(?:or|either|between|maybe|perhaps|possibly)\b", re.I)
# one variable's solutions joined by "or" are a list, not a hedge: "x = 2 or x = 3", "x < -1 or x > 1"
_VAR = r"[a-zA-Z](?:_\{?\w+\}?)?(?:\([a-z]\))?"
_REL_OP = r"(?:=|<|>|\\le(?:q)?|\\ge(?:q)?|\\lt|\\gt|\\ne(?:q)?)(?![a-zA-Z])"
_OR_EQ_RE = re.compile(rf"^\s*({_VAR})\s*{_REL_OP}|^\s*[-+\w.\\{{}}]+\s*{_REL_OP}\s*({_VAR})\s*{_REL_OP}")
_OR_SPLIT_RE = re.compile(r"\s+or\s+|\s*\\text\{\s*or\s*\}\s*", re.I)
_CODE_RE = re.compile(
    r"lambda\b|__\w+__|\bimport\b|\bopen\s*\(|\bexec\s*\(|\beval\s*\(|\bcompile\s*\(|\bos\.\w|"
    r"\bsubprocess\b|\bsystem\s*\(|\bgetattr\s*\(",
    re.I,
)
_CURRENCY_DOT_RE = re.compile(r"\b(rs|s)\s*\.\s*(?=\d)", re.I)
_NUMBER_SCAN_RE = re.compile(
    r"(?<![A-Za-z_\d.])-?\$?\s?(?:\d+\s+\d+\s*/\s*\d+|\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?(?:\s*/\s*\d+(?:\.\d+)?)?|\.\d+)"
    r"(?P<glued>[A-Za-z]*)"
)
_TERMINAL_CHARS = set(".!?)]}$*%>\"'")
_FUNCTION_WORDS = frozenset(
    "a an the and or but so then for to of in on at by with from as than that which who is are was "
    "were be been will would can could has have had it its their his her each per if when while "
    "he she they we i you".split()
)
# an operator right after the last number means it is an intermediate result; "/year" is a unit
_OPERATOR_AFTER_RE = re.compile(r"^\s*(?:[=+*^×÷]|[-/](?!\s*[A-Za-z])|x(?![A-Za-z])|\\times|\\cdot)")


@dataclass(frozen=True)
class Extraction:
    """What a completion committed to.

    Attributes:
        answer: the raw answer text (not yet normalised), or None.
        source: which marker produced it: reft|phrase|hash|boxed|last_number|none.
        reason: why there is no answer (hedge, code-like, truncated, no marker), else None.
    """

    answer: str | None
    source: str
    reason: str | None = None


def _brace_group(text: str, start: int) -> tuple[str, int] | None:
    """Content and end index of the `{…}` group that opens at text[start] == '{'."""
    depth = 0
    for i in range(start, min(len(text), start + MAX_SPAN_CHARS + 1000)):
        c = text[i]
        if c == "{" and text[i - 1] != "\\":
            depth += 1
        elif c == "}" and text[i - 1] != "\\":
            depth -= 1
            if depth == 0:
                return text[start + 1:i], i + 1
    return None


def _box_content(text: str, pos: int) -> tuple[str, int] | None:
    """Content of the box whose command starts at `pos`: `\\boxed{…}` or `\\boxed 5`."""
    m = _BOX_RE.match(text, pos)
    if m is None:
        return None
    j = m.end()
    while j < len(text) and text[j] == " ":
        j += 1
    if j < len(text) and text[j] == "{":
        return _brace_group(text, j)
    if j > m.end():  # `\boxed 5`: one token up to whitespace or `$`
        k = j
        while k < len(text) and not text[k].isspace() and text[k] != "$":
            k += 1
        return (text[j:k], k) if k > j else None
    return None


def _scope(text: str) -> tuple[str, str | None]:
    """Apply the `Answer reasoning:`, `</think>` and `<answer>` scoping rules."""
    if len(text) > MAX_COMPLETION_CHARS:
        text = text[-MAX_COMPLETION_CHARS:]
    k = text.rfind("Answer reasoning:\n")
    if k >= 0:
        text = text[k + len("Answer reasoning:\n"):]
    k = text.rfind("</think>")
    if k >= 0:
        text = text[k + len("</think>"):]
    elif "<think>" in text:
        return "", "unfinished <think>"
    k = text.rfind("<answer>")
    if k >= 0:
        end = text.find("</answer>", k)
        text = text[k + len("<answer>"):end if end >= 0 else len(text)]
    return text, None


_MATH_SPAN_MAX = 600
_QUOTES = "\"'\u201c\u201d`"
_DETERMINER_RE = re.compile(r"(?:the|a|an|this|that|its|it|our|my|there)\b", re.I)
_COPULA_RE = re.compile(r"\s(?:is|are|was|were|equals|will\s+be|would\s+be)\s|\s=\s?", re.I)
# what may sit between two candidates of ONE answer ("$2$ and $3$", "\boxed{1}, \boxed{2}")
_CONNECTIVE_RE = re.compile(r"(?:,|;|&|and|as\s+well\s+as|,\s*and)?", re.I)
# a label in front of the next candidate ("and y = \boxed{3}", "y_2 =", "f(x) =", "(x, y) =")
_LABEL_RE = re.compile(r"\s*(?:[a-zA-Z](?:_\{?\w+\}?)?(?:'|\(\w\))?|\([a-z](?:\s*,\s*[a-z])+\))\s*=\s*$")
# "for part (a)", "in (b)": part labels between the boxes of a multi-part answer
_PART_RE = re.compile(r"\b(?:for|in)\s+(?:part\s*)?\(?[a-z0-9]{1,2}\)?|\bpart\s*\(?[a-z0-9]{1,2}\)?", re.I)
_HEDGE_WORD_RE = re.compile(r"\b(?:or|either|maybe|perhaps|possibly)\b", re.I)
# after a committed answer: "(or possibly 15)", ", or maybe 13", ". Or 13": another candidate follows
# the hedge word at once ("Maybe I should double-check: 3 * 4 = 12" is not one)
_HEDGE_TAIL_RE = re.compile(
    r"[\s.,;:)\]$]*\(?\s*(?:or|maybe|perhaps|possibly)(?:\s+(?:maybe|perhaps|possibly|even|also))?[\s,:]*"
    r"(?:(?:it\s+is|it's|it\s+could\s+be|the\s+answer\s+is)\s+)?(?:[-+]?\d|\\boxed|\\fbox|\$|\\\(|\\\[)", re.I)
# a sentence after the answer that is nothing but another number: "The answer is 12; 13", "12. 13."
_BARE_CANDIDATE_RE = re.compile(r"[.;!?]?[ \t]*\$?[-+]?\d[\d,.]*\$?[ \t]*[.;!?]?[ \t]*(?:\n|$)")
# between two boxes, "not" / "rather than" rejects one of them: which one is unclear, so neither counts
_CONTRAST_RE = re.compile(r"\b(?:not|rather\s+than|instead\s+of)\b", re.I)
_DELIM_TOKENS_RE = re.compile(
    r"\$|\\\(|\\\)|\\\[|\\\]|\\q?quad|\\[,;:! ]|~|\\(?:text|textbf|textit|textrm|mathrm|mbox|hbox)\s*\{|[{}]|\\\\")


def _plain_gap(gap: str) -> str:
    """The words of the text between two candidates, without math delimiters, spacing and
    `\\text{…}` wrappers: `\\) and \\(` and `\\quad \\text{and} \\quad` are both "and"."""
    return " ".join(_DELIM_TOKENS_RE.sub(" ", gap).split()).lower()


def _gap_kind(gap: str) -> str:
    """How two candidates relate: `join` (one answer: "and", ",", a label), `hedge` ("or",
    "maybe"), or `stop` (anything else: the earlier one is not part of the answer)."""
    if len(gap) > 200:
        return "stop"
    plain = _plain_gap(gap)
    lead = plain.lstrip(" .,;:)(")
    if plain.strip() in ("/", "|", "\\vee", "\\lor", "and/or") or _HEDGE_WORD_RE.match(lead) or (_HEDGE_WORD_RE.search(plain) and len(plain.split()) <= 6
                                      and not re.search(r"[.!?](?:\s|$)", plain)):
        return "hedge"
    if re.search(r"[.!?](?:\s|$)|\n\s*\n", gap.replace("\\.", "")) or "." in plain:
        return "stop"
    plain = _LABEL_RE.sub("", plain)
    plain = _PART_RE.sub(" ", plain)
    plain = " ".join(plain.split())
    if _CONNECTIVE_RE.fullmatch(plain):
        return "join"
    words = plain.split()
    # "\boxed{1} papers and \boxed{2} bins": one unit word before the connective
    if len(words) == 2 and words[0].isalpha() and words[1] in ("and", ",", ";"):
        return "join"
    if len(words) == 1 and words[0].endswith(",") and words[0][:-1].isalpha():
        return "join"
    return "stop"


def _find_close(text: str, start: int, close: str) -> int:
    """Index of `close` at or after `start` (not escaped), or -1; bounded by `_MATH_SPAN_MAX`."""
    limit = min(len(text), start + _MATH_SPAN_MAX)
    i = start
    while i < limit:
        j = text.find(close, i, limit)
        if j < 0:
            return -1
        if close == "$" and j > 0 and text[j - 1] == "\\":
            i = j + 1
            continue
        return j
    return -1


def _looks_like_currency(content: str) -> bool:
    """`$18 and she has $`: a dollar amount followed by prose, not a math span."""
    return bool(re.match(r"\s*\d", content)) and re.search(r"(?<![\\a-zA-Z])[a-zA-Z]{3,}\s", content) is not None


def _segments(rest: str) -> tuple[list[tuple[str, str]], str]:
    """Split the sentence at the start of `rest` into ('math'|'text', string) segments.

    The sentence ends (outside math, brackets and braces) at a newline, at `!`/`?`, at `;` outside
    brackets, or at a `.` that is not a decimal point. Math is `$…$`, `$$…$$`, `\\(…\\)`, `\\[…\\]`;
    `$` that opens a dollar amount ("$18 each") is text. Returns (segments, text after the end)."""
    segs: list[tuple[str, str]] = []
    buf: list[str] = []
    i, n, depth = 0, min(len(rest), MAX_SPAN_CHARS + 200), 0

    def flush() -> None:
        if buf:
            segs.append(("text", "".join(buf)))
            buf.clear()

    while i < n:
        c = rest[i]
        opener = None
        if rest.startswith("$$", i):
            opener, close = "$$", "$$"
        elif c == "$" and (i == 0 or rest[i - 1] != "\\"):
            opener, close = "$", "$"
        elif rest.startswith("\\(", i) or rest.startswith("\\[", i):
            opener, close = rest[i:i + 2], "\\)" if rest[i + 1] == "(" else "\\]"
        if opener is not None:
            j = _find_close(rest, i + len(opener), close)
            content = rest[i + len(opener):j] if j >= 0 else ""
            if j >= 0 and not (opener == "$" and _looks_like_currency(content)):
                flush()
                segs.append(("math", content))
                i = j + len(close)
                continue
            buf.append(c)
            i += 1
            continue
        if c == "{" or (c == "\\" and _BOX_RE.match(rest, i)):
            k = rest.find("{", i) if c == "\\" else i
            group = _brace_group(rest, k) if k >= 0 and k - i < 8 else None
            if group is not None:
                buf.append(rest[i:group[1]])
                i = group[1]
                continue
        if c in "([":
            depth += 1
        elif c in ")]":
            depth = max(0, depth - 1)
        elif c == "\n" or (c in "!?;" and (i == 0 or rest[i - 1] != "\\") and (c != ";" or depth == 0)):
            break
        elif c == "." and (i == 0 or rest[i - 1] != "\\"):
            prev, nxt = rest[i - 1] if i else "", rest[i + 1] if i + 1 < n else ""
            # "… is 5. I hope": an end; "1.5" and "0.75" are decimals; "$\frac{3}{5}.$" is math
            if not nxt or nxt.isspace() or (prev and not prev.isspace() and not prev.isdigit() and not nxt.isdigit()):
                break
        buf.append(c)
        i += 1
    flush()
    return segs, rest[i:i + 200]


def _join_candidates(segs: list[tuple[str, str]]) -> tuple[str, str]:
    """From segments that start with a math span: the answer (further spans joined by "and", ",",
    or joined by a hedge so that the hedge is seen) and the text that follows it."""
    parts = [segs[0][1]]
    k = 1
    while k < len(segs):
        if segs[k][0] == "math":  # "$12$$13$": spans with nothing between them are one list
            parts += [", ", segs[k][1]]
            k += 1
            continue
        if k + 1 >= len(segs) or segs[k + 1][0] != "math":
            break
        kind = _gap_kind(segs[k][1])
        if kind == "stop":
            break
        gap = _plain_gap(segs[k][1]) if kind == "join" else segs[k][1]
        if kind == "hedge" and not _HEDGE_WORD_RE.search(_plain_gap(gap)):
            gap = "or"  # "$12$ / $13$": a symbol offering alternatives is an "or"
        parts += [f" {gap or ','} ", segs[k + 1][1]]
        k += 2
    tail = "".join(t if kind == "text" else f"${t}$" for kind, t in segs[k:])
    return "".join(parts), tail


def _prose_answer(segs: list[tuple[str, str]]) -> str | None:
    """"The largest $n$ is 34": the value after the last "is"; "Jane started it 3 hours ago": the
    one number of a prose sentence. None when neither applies."""
    first = segs[0][1].lstrip(" *" + _QUOTES) if segs[0][0] == "text" else ""
    for k in range(len(segs) - 1, -1, -1) if _DETERMINER_RE.match(first) else ():
        kind, t = segs[k]
        if kind != "text":
            continue
        hits = list(_COPULA_RE.finditer(t))
        if hits:
            after = t[hits[-1].end():] + "".join(x if kd == "text" else f"${x}$" for kd, x in segs[k + 1:])
            return after.strip()
    words = " ".join(t for kind, t in segs if kind == "text")
    if any(kind == "math" for kind, _ in segs) or len(words.split()) < 4:
        return None
    numbers = loose_numbers(words)
    return numbers[0] if len(numbers) == 1 else None


def _span_after(text: str, pos: int, cut_parenthetical: bool) -> tuple[str, str | None]:
    """The answer text that follows a phrase or `####` marker ending at `pos`, and why there is
    none (a hedge, code), else None."""
    rest = text[pos:pos + MAX_SPAN_CHARS + 200]
    # "Answer:\n73": the answer may start on the next line
    stripped = rest.lstrip(" \t*")
    if stripped.startswith("\n"):
        stripped = stripped.lstrip()
    rest = stripped.lstrip("* \t")
    if rest.startswith('\\"'):
        rest = rest[1:]
    rest = rest.lstrip(_QUOTES)
    line = rest.split("\n", 1)[0]
    if _CODE_RE.search(line):
        return "__code__", "code-like answer"  # code anywhere on the answer line, even after a cut point
    rest = _CURRENCY_DOT_RE.sub(r"\1 ", rest)  # "rs . 300" is money, not a sentence end
    segs, after = _segments(rest)
    if _HEDGE_TAIL_RE.match(after) or _BARE_CANDIDATE_RE.match(after):
        return "", "hedged answer"  # "The answer is 12. Or maybe 13.", "The answer is 12; 13"
    if not segs:
        return "", None
    if segs[0][0] == "math":
        answer, tail = _join_candidates(segs)
        plain_tail = _plain_gap(tail).strip(" " + _QUOTES + "\\")
        if _HEDGE_TAIL_RE.match(tail) or _HEDGE_WORD_RE.match(plain_tail.lstrip(" ,;(")):
            return "", "hedged answer"  # "$12$ (or possibly $15$)"
        if re.fullmatch(r"%|[a-z]+(?: [a-z]+)?", plain_tail) and not _DETERMINER_RE.match(plain_tail):
            answer = f"{answer} {plain_tail}"  # words after the math: "$28$ percent", "$5$ cm", "$5$ million"
        return answer.strip(), None
    prose = _prose_answer(segs)
    line = prose if prose is not None else "".join(t if kind == "text" else f"${t}$" for kind, t in segs)
    if cut_parenthetical:
        k = line.find(" (")
        if k > 0 and not line[:k].rstrip().endswith(("+", "-", "*", "/", "^", "=")):
            if _HEDGE_WORD_RE.match(line[k + 2:].lstrip()) or re.match(r"\(\s*[-+$]?\d[\d,.]*\s*\)", line[k + 1:]):
                return "", "hedged answer"  # "12 (or possibly 15)", "12 (13)"
            line = line[:k]  # "18 (9 eggs at $2)" is 18; "78 + ( 4 / 7 )" stays whole
    return line.strip().strip("*").strip().rstrip(_QUOTES + "\\").strip(), None


def one_variable_or(span: str) -> str | None:
    """`x = 2 or x = 3`, `x < -1 \\text{ or } x > 1`: statements about ONE variable joined by "or"
    describe a solution set; return them as a comma list. Anything else with "or" is a hedge: None."""
    parts = [p for p in _OR_SPLIT_RE.split(unwrap_text_commands(span)) if p.strip()]
    if len(parts) < 2:
        return None
    names = set()
    for p in parts:
        m = _OR_EQ_RE.match(_DELIM_TOKENS_RE.sub(" ", p) if "$" in p or "\\(" in p else p)
        if m is None:
            return None
        names.add(m.group(1) or m.group(2))
    return ", ".join(p.strip().strip("$").strip() for p in parts) if len(names) == 1 else None


def _check_span(span: str, source: str) -> Extraction:
    span = span.strip()
    if not span:
        return Extraction(None, source, "empty answer")
    if len(span) > MAX_SPAN_CHARS:
        return Extraction(None, source, "answer too long")
    if _CODE_RE.search(span):
        return Extraction(None, source, "code-like answer")
    plain = unwrap_text_commands(span)
    if _HEDGE_RE.search(plain):
        joined = one_variable_or(span)
        if joined is not None:
            return Extraction(joined, source)  # x = 2 or x = 3
        return Extraction(None, source, "hedged answer")
    if span.startswith("<") and span.endswith(">") and len(span) > 2:
        span = span[1:-1].strip()  # ReFT SVAMP CoTs write "the answer is <203>"
    return Extraction(span, source)


def _last_box(text: str) -> tuple[int, str | None] | None:
    """Start and content of the last well-formed box, merged with the boxes joined to it by "and",
    ",", `\\quad \\text{and} \\quad`, `\\) and \\(` or a label ("x = \\boxed{2} and y = \\boxed{3}").

    The content is None when the box is one of several offered as alternatives ("or", "maybe",
    "possibly" between boxes, or right after the last one): a hedge."""
    starts = [m.start() for m in _BOX_RE.finditer(text)]
    # only the last few boxes can be the committed answer; bounding this keeps
    # "\boxed{" * 30000 linear (each unbalanced box scans up to its window)
    for idx in range(len(starts) - 1, max(-1, len(starts) - 1 - MAX_BOXES), -1):
        got = _box_content(text, starts[idx])
        if got is None:
            continue
        if _HEDGE_TAIL_RE.match(text, got[1], got[1] + 200) or _HEDGE_TAIL_RE.match(
                _plain_gap(text[got[1]:got[1] + 200])):
            return starts[idx], None  # "\boxed{12} (or possibly \boxed{15})"
        contents, first, or_joined = [got[0]], starts[idx], False
        j = idx - 1
        while j >= max(0, idx - MAX_BOXES):
            prev = _box_content(text, starts[j])
            if prev is None or prev[1] > first:
                break
            gap = text[prev[1]:first]
            kind = _gap_kind(gap)
            if kind == "hedge" and _plain_gap(gap).strip(" ,") == "or":
                kind, or_joined = "join", True  # allowed only for one variable's solutions (below)
            if kind == "hedge" or (kind == "stop" and len(gap) < 40 and _CONTRAST_RE.search(_plain_gap(gap))):
                return first, None  # "\boxed{12} or \boxed{13}", "\boxed{7}, not \boxed{5}"
            if kind == "stop":
                break
            contents.insert(0, prev[0])
            first = starts[j]
            j -= 1
        if or_joined and one_variable_or(" or ".join(contents)) is None:
            return first, None  # "\boxed{12} \text{ or } \boxed{13}"
        return first, ", ".join(c.strip() for c in contents)
    return None


def _math_before(text: str, end: int) -> tuple[int, str] | None:
    """The `$…$` or `\\(…\\)` span that ends right at `end` ("$x \\le 2$ is our answer"): (start, content)."""
    if text.endswith("$", 0, end) and not text.endswith("\\$", 0, end):
        start = text.rfind("$", max(0, end - 301), end - 1)
        if start >= 0 and "\n" not in text[start:end]:
            return start, text[start + 1:end - 1]
    elif text.endswith("\\)", 0, end):
        start = text.rfind("\\(", max(0, end - 302), end - 2)
        if start >= 0:
            return start, text[start + 2:end - 2]
    return None


def _last_number(text: str) -> Extraction:
    """The last-number fallback, refused for text that looks truncated."""
    tail = text.rstrip()
    if not tail:
        return Extraction(None, "none", "empty completion")
    window = tail[-3000:]
    last = None
    for m in _NUMBER_SCAN_RE.finditer(window):
        glued = m.group("glued")
        if not glued or glued.lower() in GLUED_SUFFIXES:
            last = m  # "AZYUK2A" and "B2" are labels, not numbers
    if last is None:
        return Extraction(None, "none", "no answer marker and no number")
    after = window[last.end():]
    if _OPERATOR_AFTER_RE.match(after):
        return Extraction(None, "last_number", "last number is an intermediate result")
    if not (tail[-1].isdigit() or tail[-1] in _TERMINAL_CHARS):
        # No final punctuation. GSM8K-style lines often end "... = 3 bolts of fabric": accept a
        # number followed by a few unit words, but not text cut mid-sentence ("... $2 each for").
        # No words at all: the text ends on the number's glued unit ("... = 12kg", "came 3rd"), a unit as above.
        words = after.split()
        if (len(words) > 4 or any(c.isdigit() or c in ",;:(" for c in after)
                or (words and words[-1].lower() in _FUNCTION_WORDS)):
            return Extraction(None, "last_number", "truncated (no final sentence)")
    sentence_start = max(window.rfind(". ", 0, last.start()), window.rfind("\n", 0, last.start()))
    if _HEDGE_RE.search(window[sentence_start + 1:]):
        return Extraction(None, "last_number", "hedged answer")
    number = last.group(0)[:last.end() - last.start() - len(last.group("glued"))]
    return Extraction(number.replace("$", "").strip(), "last_number")


def extract_answer(text: str, *, last_number_fallback: bool, cut_parenthetical: bool = True) -> Extraction:
    """Return the answer the completion commits to (see the module docstring for the rules).

    Args:
        text: the completion (prompt echo allowed).
        last_number_fallback: use the last number when there is no marker (GSM8K/SVAMP style).
        cut_parenthetical: cut "18 (9 eggs at $2)" to "18" (numeric datasets), off for LaTeX.
    """
    text, reason = _scope(text)
    if reason is not None:
        return Extraction(None, "none", reason)
    candidates: list[tuple[int, str, str | None, str | None]] = []  # (start, source, span, reason)
    phrase = hashes = None
    for m in _PHRASE_RE.finditer(text):  # the last match wins
        phrase = m
    if phrase is not None:
        source = "reft" if text[max(0, phrase.start() - 20):phrase.end()].lower().endswith(
            "therefore, the answer is:") else "phrase"
        candidates.append((phrase.start(), source, *_span_after(text, phrase.end(), cut_parenthetical)))
    for m in _HASH_RE.finditer(text):
        hashes = m
    if hashes is not None:
        candidates.append((hashes.start(), "hash", *_span_after(text, hashes.end(), cut_parenthetical)))
    trailing = None
    for m in _TRAILING_PHRASE_RE.finditer(text):
        trailing = m
    if trailing is not None:
        got = _math_before(text, trailing.start())
        if got is not None:
            candidates.append((got[0], "phrase", got[1], None))
    box = _last_box(text)
    if box is not None:
        candidates.append((box[0], "boxed", box[1], None if box[1] is not None else "hedged answer"))
    if not candidates:
        if last_number_fallback:
            return _last_number(text)
        return Extraction(None, "none", "no answer marker")
    start, source, span, why = max(candidates, key=lambda c: c[0])
    if why is not None or span is None:
        return Extraction(None, source, why or "hedged answer")
    # "The answer is \boxed{5}": the phrase starts first but the box is its content
    return _check_span(span, source)
