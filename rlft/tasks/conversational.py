"""Conversational datasets in TRL's formats as `Record`s, from local JSONL or a Hugging Face dataset.

Accepted rows (TRL's "conversational" and "prompt-completion" dataset types):

- ``{"messages": [{"role": "system", ...}, {"role": "user", ...}, {"role": "assistant", ...}]}``: the last
  assistant message is the reply, the turns before it the prompt (no trailing assistant message: a
  prompt-only row); a ``prompt`` field beside ``messages`` is ignored;
- ``{"prompt": [messages...], "completion": [{"role": "assistant", "content": ...}]}``, ``completion``
  optional (prompt-only, as for GRPO);
- ``{"prompt": "text", "completion": "text"}``: TRL's standard form, read as one user turn and its reply.

Each row also needs its gold final answer in its own column, ``answer`` or else ``solution`` (TRL's
`accuracy_reward` name): rlft never parses the answer out of the assistant turn, since the reward and the
held-out accuracy need it for rows without a reply too. A GSM8K solution (``... #### 72``) in that column
gives its ``####`` value. The prompt must end with a user turn; its content is `Record.question` (the
``reft`` prompt format uses only that), and all the prompt's turns are kept in `Record.prompt_messages`
for ``data.prompt_format=chat``. The reply is kept verbatim in `Record.cot` and is the whole SFT target.
Message content may be a string or a list of ``{"type": "text", "text": ...}`` blocks.

Every error names the file and line (JSONL) or the row (Hugging Face) and the key.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable

from rlft.tasks.base import Record
from rlft.tasks.errors import DataError, jsonl_rows, located, read_text, text_field
from rlft.tasks.gsm8k import parse_gsm8k_answer

ROLES = ("system", "user", "assistant")
ANSWER_KEYS = ("answer", "solution")


def is_conversational(row: object) -> bool:
    """True for a row in one of TRL's conversational or prompt(-completion) forms."""
    return isinstance(row, dict) and ("messages" in row or "prompt" in row)


def jsonl_is_conversational(path: str | os.PathLike) -> bool:
    """Whether the first record of a JSONL file is conversational (False if it cannot be read or parsed:
    the GSM8K loader then reports the problem with its line)."""
    try:
        text = read_text(path)
    except DataError:
        return False
    for line in text.splitlines():
        if line.strip():
            try:
                return is_conversational(json.loads(line))
            except json.JSONDecodeError:
                return False
    return False


def _content(message: dict, key: str, j: int, fail: Callable[[str], DataError]) -> str:
    content = message.get("content")
    if isinstance(content, list):  # content blocks: keep the text ones
        parts = [b.get("text") for b in content if isinstance(b, dict) and b.get("type") == "text"]
        if parts and all(isinstance(p, str) for p in parts):
            return "".join(parts)
    if not isinstance(content, str):
        raise fail(f"field {key!r}: message {j} ({message.get('role')}) has no text 'content' "
                   f"(got {type(content).__name__})")
    return content


def _turns(value: object, key: str, fail: Callable[[str], DataError], text_ok: bool = False) -> list[tuple[str, str]]:
    """(role, content) pairs of a message list; with `text_ok` a string is one user turn."""
    if text_ok and isinstance(value, str):
        return [("user", value)]
    if not isinstance(value, list) or not value:
        raise fail(f"field {key!r} must be a non-empty list of messages{' or a string' if text_ok else ''}, "
                   f"got {type(value).__name__}")
    turns = []
    for j, message in enumerate(value):
        if not isinstance(message, dict):
            raise fail(f"field {key!r}: message {j} must be an object with 'role' and 'content'")
        role = message.get("role")
        if role not in ROLES:
            raise fail(f"field {key!r}: message {j} has role {role!r} (expected one of {', '.join(ROLES)})")
        turns.append((role, _content(message, key, j, fail)))
    return turns


def _split(row: dict, fail: Callable[[str], DataError]) -> tuple[list[tuple[str, str]], str | None]:
    """The prompt turns and the reply (None for a prompt-only row)."""
    if "messages" in row:  # some hub sets (UltraChat) also carry the prompt as text: the messages rule
        turns = _turns(row["messages"], "messages", fail)
        if turns[-1][0] == "assistant":
            return turns[:-1], turns[-1][1]
        return turns, None
    prompt = _turns(row["prompt"], "prompt", fail, text_ok=True)
    completion = row.get("completion")
    if completion is None or isinstance(completion, str):
        return prompt, completion
    reply = _turns(completion, "completion", fail)
    if len(reply) != 1 or reply[0][0] != "assistant":
        raise fail(f"field 'completion': expected one assistant message, got roles {[r for r, _ in reply]}")
    return prompt, reply[0][1]


def _answer(row: dict, where: str | os.PathLike, line: int | None, context: str,
            fail: Callable[[str], DataError]) -> str:
    key = next((k for k in ANSWER_KEYS if row.get(k) is not None), None)
    if key is None:
        raise fail("no 'answer' or 'solution' field: a conversational record needs its gold final answer in a "
                   "column of its own (rlft does not parse it from the assistant turn)")
    raw = text_field(row, key, where, line, context=context, numbers_ok=True)
    try:
        return parse_gsm8k_answer(raw)[1] if "####" in raw else raw.strip()
    except ValueError as e:
        raise fail(f"field {key!r}: {e}") from e


def record_from_row(row: object, record_id: str, *, where: str | os.PathLike, line: int | None = None,
                    context: str = "", dataset: str = "gsm8k") -> Record:
    """One conversational row as a `Record`.

    Args:
        row: the parsed row (a dict).
        record_id: the record's id.
        where: the file or source, for error messages; line: its 1-based line (JSONL); context: more location
            text, e.g. ``"row 17: "``.
        dataset: the `Record.dataset` value (which checker rules apply).

    Raises:
        DataError: a malformed message list, a prompt that does not end with a user turn, or no answer.
    """
    if not isinstance(row, dict):
        raise located(where, f"{context}expected a JSON object, got {type(row).__name__}", line)

    def fail(message: str) -> DataError:
        return located(where, context + message, line)

    prompt, reply = _split(row, fail)
    if prompt[-1][0] != "user":
        raise fail(f"the prompt must end with a user turn, not {prompt[-1][0]!r} "
                   "(assistant prefills are not supported)")
    question = prompt[-1][1]
    if not question.strip():
        raise fail("the last user turn is empty")
    answer = _answer(row, where, line, context, fail)
    return Record(id=record_id, question=question.strip(), answer=answer,
                  cot=reply if reply and reply.strip() else None, dataset=dataset, prompt_messages=tuple(prompt))


def load_conversational_jsonl(path: str | os.PathLike, split_name: str = "train", dataset: str = "gsm8k") -> list[Record]:
    """Load a JSONL file of conversational rows (see the module docstring).

    Returns:
        One `Record` per non-blank line, ids ``{dataset}_{split_name}_{i}``.

    Raises:
        DataError: as `record_from_row`, or invalid JSON, or an empty file, with ``path:line:``.
    """
    records: list[Record] = []
    for line_no, row in jsonl_rows(path):
        if not is_conversational(row):
            raise located(path, "not a conversational row: expected a 'messages' or 'prompt' field "
                                "(the first row of the file is conversational)", line_no)
        records.append(record_from_row(row, f"{dataset}_{split_name}_{len(records)}", where=path, line=line_no,
                                       dataset=dataset))
    if not records:
        raise located(path, "no records (empty file)")
    return records
