"""Find the answer a completion *commits to* (`checker.md` §1).

Markers, all case-insensitive, and the **last** one in the text wins (so a later "The answer is
X" overrides an earlier `\\boxed{Y}`, and a self-correction counts):
- ReFT's `Therefore, the answer is: X`, and "The answer is X", "Final answer: X", Minerva's
  "The final answer is X. I hope it is correct.", `**Answer:** X`, `Answer:\\nX`;
- GSM8K's `#### X` (also `####72`, `#### $36`, `#### 1,250`);
- the last `\\boxed{…}` / `\\fbox{…}` with nested braces, and `\\boxed 5`. Adjacent boxes joined
  by "and" or "," form one list answer.
Scoping: text after the last `</think>` (an unclosed `<think>` means no answer), and inside the last
`<answer>…</answer>` when present. A prompt echoed up to `Answer reasoning:` is cut off.

Commitment rules: a hedge ("5 or 6", "between 5 and 6") or a code-like answer (`lambda`, dunder
names, `import`, `open(`) gives no answer. The last-number fallback (GSM8K/SVAMP-style datasets,
configurable) applies only when no marker exists and the text ends like a finished sentence, so a
truncated completion whose last number is an intermediate one is not credited.

All scans are single regex passes or bounded brace matching: linear in the text length.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from rewards.normalize import unwrap_text_commands

MAX_COMPLETION_CHARS = 200_000
"""Longer completions are cut to their last this-many characters (keeps every check linear)."""

MAX_SPAN_CHARS = 1000
MAX_BOXES = 20

_PHRASE_RE = re.compile(
    r"\b(?:correct|right)\s+(?:option|choice)\s*(?:is|:)\s*:?|"
    r"(?:final\s+answer|\banswer)\s*(?:to\s+(?:the|this)\s+(?:question|problem)\s+)?"
    r"(?:\*\*)?\s*(?:is|:|=|would\s+be|will\s+be|should\s+be)\s*(?:\*\*)?\s*:?",
    re.I,
)
_HASH_RE = re.compile(r"####")
_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![a-zA-Z])")
_HEDGE_RE = re.compile(r"\b(?:or|either|between|maybe|perhaps|possibly)\b", re.I)
_OR_EQ_RE = re.compile(r"^\s*([a-zA-Z])\s*=")
_CODE_RE = re.compile(
    r"lambda\b|__\w+__|\bimport\b|\bopen\s*\(|\bexec\s*\(|\beval\s*\(|\bcompile\s*\(|\bos\.\w|"
    r"\bsubprocess\b|\bsystem\s*\(|\bgetattr\s*\(",
    re.I,
)
# what may sit between two boxes that form one answer: "and", ",", and an optional "y =" label
_BOX_JOIN_RE = re.compile(r"[\s$,]*(?:and|,|&)?[\s$,]*(?:[a-zA-Z]\s*=\s*)?[\s$]*", re.I)
_BOX_OR_RE = re.compile(r"[\s$,]*or[\s$]*", re.I)
_SENTENCE_END_RE = re.compile(r"(?<![\d\s\\])\.(?!\d)|(?<!\\)\.(?=\s|$)|(?<!\\)[!?;]|\n")
_CURRENCY_DOT_RE = re.compile(r"\b(rs|s)\s*\.\s*(?=\d)", re.I)
_NUMBER_SCAN_RE = re.compile(
    r"-?\$?\s?(?:\d+\s+\d+\s*/\s*\d+|\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?(?:\s*/\s*\d+(?:\.\d+)?)?|\.\d+)"
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


def _span_after(text: str, pos: int, cut_parenthetical: bool) -> str:
    """The answer text that follows a phrase or `####` marker ending at `pos`."""
    rest = text[pos:pos + MAX_SPAN_CHARS + 200]
    # "Answer:\n73": the answer may start on the next line
    stripped = rest.lstrip(" \t*")
    if stripped.startswith("\n"):
        stripped = stripped.lstrip()
    rest = stripped.lstrip("* \t")
    if rest.startswith("$$"):
        end = rest.find("$$", 2)
        return rest[2:end] if end >= 0 else rest[2:].split("\n")[0]
    if rest.startswith("\\[") or rest.startswith("\\("):
        close = "\\]" if rest[1] == "[" else "\\)"
        end = rest.find(close, 2)
        return rest[2:end] if end >= 0 else rest[2:].split("\n")[0]
    if rest.startswith("$"):
        end = rest.find("$", 1)
        if end >= 0:
            return rest[1:end]
    line = rest.split("\n", 1)[0]
    if _CODE_RE.search(line):
        return "__code__"  # code anywhere on the answer line, even after a cut point
    line = _CURRENCY_DOT_RE.sub(r"\1 ", line)  # "rs . 300" is money, not a sentence end
    m = _SENTENCE_END_RE.search(line)
    if m:
        line = line[:m.start()]
    if cut_parenthetical:
        k = line.find(" (")
        if k > 0 and not line[:k].rstrip().endswith(("+", "-", "*", "/", "^", "=")):
            line = line[:k]  # "18 (9 eggs at $2)" is 18; "78 + ( 4 / 7 )" stays whole
    return line.strip().strip("*").strip()


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
        parts = re.split(r"\s+or\s+", plain)
        names = {m.group(1) for p in parts if (m := _OR_EQ_RE.match(p))}
        if len(parts) > 1 and len(names) == 1 and all(_OR_EQ_RE.match(p) for p in parts):
            return Extraction(", ".join(p.strip() for p in parts), source)  # x = 2 or x = 3
        return Extraction(None, source, "hedged answer")
    if span.startswith("<") and span.endswith(">") and len(span) > 2:
        span = span[1:-1].strip()  # ReFT SVAMP CoTs write "the answer is <203>"
    return Extraction(span, source)


def _last_box(text: str) -> tuple[int, str | None] | None:
    """Start and content of the last well-formed box, merged with adjacent boxes ("2 and 3").

    The content is None when the box is one of several joined by "or" (a hedge)."""
    starts = [m.start() for m in _BOX_RE.finditer(text)]
    # only the last few boxes can be the committed answer; bounding this keeps
    # "\boxed{" * 30000 linear (each unbalanced box scans up to its window)
    for idx in range(len(starts) - 1, max(-1, len(starts) - 1 - MAX_BOXES), -1):
        got = _box_content(text, starts[idx])
        if got is None:
            continue
        contents, first = [got[0]], starts[idx]
        j = idx - 1
        while j >= max(0, idx - MAX_BOXES):
            prev = _box_content(text, starts[j])
            if prev is None:
                break
            gap = text[prev[1]:first]
            if _BOX_OR_RE.fullmatch(gap):
                return first, None
            if not _BOX_JOIN_RE.fullmatch(gap) or "." in gap:
                break
            contents.insert(0, prev[0])
            first = starts[j]
            j -= 1
        return first, ", ".join(c.strip() for c in contents)
    return None


def _last_number(text: str) -> Extraction:
    """The last-number fallback, refused for text that looks truncated."""
    tail = text.rstrip()
    if not tail:
        return Extraction(None, "none", "empty completion")
    window = tail[-3000:]
    last = None
    for m in _NUMBER_SCAN_RE.finditer(window):
        last = m
    if last is None:
        return Extraction(None, "none", "no answer marker and no number")
    after = window[last.end():]
    if _OPERATOR_AFTER_RE.match(after):
        return Extraction(None, "last_number", "last number is an intermediate result")
    if not (tail[-1].isdigit() or tail[-1] in _TERMINAL_CHARS):
        # No final punctuation. GSM8K-style lines often end "... = 3 bolts of fabric": accept a
        # number followed by a few unit words, but not text cut mid-sentence ("... $2 each for").
        words = after.split()
        if (len(words) > 4 or any(c.isdigit() or c in ",;:(" for c in after)
                or words[-1].lower() in _FUNCTION_WORDS):
            return Extraction(None, "last_number", "truncated (no final sentence)")
    sentence_start = max(window.rfind(". ", 0, last.start()), window.rfind("\n", 0, last.start()))
    if _HEDGE_RE.search(window[sentence_start + 1:]):
        return Extraction(None, "last_number", "hedged answer")
    return Extraction(last.group(0).replace("$", "").strip(), "last_number")


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
    candidates: list[tuple[int, str, str | None]] = []  # (start, source, span)
    phrase = hashes = None
    for m in _PHRASE_RE.finditer(text):  # the last match wins
        phrase = m
    if phrase is not None:
        source = "reft" if text[max(0, phrase.start() - 20):phrase.end()].lower().endswith(
            "therefore, the answer is:") else "phrase"
        candidates.append((phrase.start(), source, _span_after(text, phrase.end(), cut_parenthetical)))
    for m in _HASH_RE.finditer(text):
        hashes = m
    if hashes is not None:
        candidates.append((hashes.start(), "hash", _span_after(text, hashes.end(), cut_parenthetical)))
    box = _last_box(text)
    if box is not None:
        candidates.append((box[0], "boxed", box[1]))
    if not candidates:
        if last_number_fallback:
            return _last_number(text)
        return Extraction(None, "none", "no answer marker")
    start, source, span = max(candidates, key=lambda c: c[0])
    if span is None:
        return Extraction(None, source, "hedged answer")
    # "The answer is \boxed{5}": the phrase starts first but the box is its content
    return _check_span(span, source)
