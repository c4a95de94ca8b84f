"""The one exception every task loader raises on bad input.

A dataset problem should point at the place to fix, the way a compiler error does:
``train.jsonl:17: missing field 'answer'``. `DataError` subclasses `ValueError`, so callers that
already catch `ValueError` keep working.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


class DataError(ValueError):
    """A dataset file, row or field that cannot be turned into `Record`s."""


def located(path: str | os.PathLike, message: str, line: int | None = None) -> DataError:
    """Build a `DataError` whose message starts with ``path:line:``.

    Args:
        path: the file (or other source name) the problem is in.
        message: what is wrong, e.g. ``missing field 'answer'``.
        line: 1-based line number, when known.

    Returns:
        The error, for the caller to raise.
    """
    where = f"{path}:{line}" if line is not None else f"{path}"
    return DataError(f"{where}: {message}")


def read_text(path: str | os.PathLike) -> str:
    """Read a UTF-8 dataset file, turning a missing or unreadable file into a `DataError`."""
    p = Path(path)
    if not p.is_file():
        raise located(path, "no such file" if not p.exists() else "not a file")
    try:
        return p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise located(path, f"not UTF-8 text ({e.reason} at byte {e.start})") from e
    except OSError as e:
        raise located(path, f"cannot read file: {e.strerror}") from e


def json_syntax_error(path: str | os.PathLike, e: json.JSONDecodeError, line: int | None = None) -> DataError:
    """Turn a `json.JSONDecodeError` into a located `DataError`.

    Args:
        path: the file being parsed.
        e: the parser's error.
        line: the file line of the parsed text when it is a single JSONL line (the parser then
            counts from that line); None when the whole file was parsed.
    """
    if line is None:
        return DataError(f"{path}:{e.lineno}:{e.colno}: invalid JSON: {e.msg}")
    return DataError(f"{path}:{line}:{e.colno}: invalid JSON: {e.msg}")


def jsonl_rows(path: str | os.PathLike):
    """(line number, parsed row) for every non-blank line of a JSONL file; invalid JSON is a DataError with
    ``path:line:``."""
    for line_no, line in enumerate(read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield line_no, json.loads(line)
        except json.JSONDecodeError as e:
            raise json_syntax_error(path, e, line=line_no) from e


def text_field(
    row: object,
    name: str,
    path: str | os.PathLike,
    line: int | None,
    *,
    context: str = "",
    required: bool = True,
    numbers_ok: bool = False,
) -> str | None:
    """Read one string field of a JSON object, or raise a located `DataError`.

    Args:
        row: the parsed JSON value (must be an object).
        name: the field to read.
        path: the file, for the error message.
        line: its 1-based line, for the error message.
        context: extra location text after ``path:line:``, e.g. ``"item 17: "``.
        required: a missing field (or JSON null) is an error; otherwise it gives None.
        numbers_ok: accept a JSON number and return its ``str()`` (answer values are sometimes
            numbers in hand-made files); booleans are never accepted.

    Returns:
        The field's text, or None when it is absent and not required.
    """
    if not isinstance(row, dict):
        raise located(path, f"{context}expected a JSON object, got {type(row).__name__}", line)
    value = row.get(name)
    if value is None:
        if required:
            raise located(path, f"{context}missing field {name!r}", line)
        return None
    if numbers_ok and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise located(path, f"{context}field {name!r} must be a string, got {type(value).__name__}", line)
    if required and not value.strip():
        raise located(path, f"{context}field {name!r} is empty", line)
    return value
