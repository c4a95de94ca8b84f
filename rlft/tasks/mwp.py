"""The ReFT release's data files (``lqtrung1998/mwp_ReFT`` ``data/``): GSM8K, SVAMP, MathQA.

Each file is a JSON list of ``{"item_id", "question", "answer_cot", "answer_value"}``:
- N-CoT files (``*_nl.json``) hold a natural-language CoT in ``answer_cot``;
- P-CoT files (``*_python_sdp.json``) hold a ``def solution():`` program in ``answer_cot``;
- test files have no ``answer_cot``.

The dataset (which checker rules apply) is the ``item_id`` prefix: ``gsm8k_0``, ``svamp_12``,
``mathqa_3``, ``mathqa-numeric_3``. MathQA-MCQ questions end with a line of inline options
(``a ) 38 , b ) 27.675 , ...``; a few use a Python list repr ``['a ) 12', 'b ) 15', ...]``). We copy
that line into ``Record.options`` in the ``a ) .. , b ) ..`` form and keep the question as is; the gold
is the letter.
"""

from __future__ import annotations

import ast
import json
import os
import re

from rlft.tasks.base import Record
from rlft.tasks.errors import DataError, json_syntax_error, located, read_text, text_field

DATASETS = ("gsm8k", "svamp", "mathqa", "mathqa-numeric")
_OPTION = re.compile(r"(?:^|\s,\s)([a-e]) \)")


def _item_line(text: str, index: int) -> int:
    """1-based line where item `index` of the (valid) JSON list in `text` starts; for error messages."""
    decoder = json.JSONDecoder()
    pos = text.index("[") + 1
    for i in range(index + 1):
        while text[pos] in " \t\r\n,":
            pos += 1
        if i < index:
            _, pos = decoder.raw_decode(text, pos)
    return text.count("\n", 0, pos) + 1


def _options(question: str) -> str | None:
    """The inline options line of a MathQA-MCQ question, as ``a ) .. , b ) ..``; None if absent."""
    last = question.rstrip().rsplit("\n", 1)[-1].strip()
    if last.startswith("[") and last.endswith("]"):
        try:
            items = ast.literal_eval(last)
        except (ValueError, SyntaxError):
            return None
        if isinstance(items, list) and all(isinstance(x, str) for x in items):
            last = " , ".join(x.strip() for x in items)
    return last if last.startswith("a )") else None


def _record(item: object, index: int, path: str | os.PathLike, dataset: str | None, style: str) -> Record:
    """Convert one list item; errors say ``item {index}`` (the caller adds the line)."""
    where = f"item {index}: "
    item_id = text_field(item, "item_id", path, None, context=where).strip()
    question = text_field(item, "question", path, None, context=where)
    answer = text_field(item, "answer_value", path, None, context=where, numbers_ok=True).strip()
    annotation = text_field(item, "answer_cot", path, None, context=where, required=False)
    where = f"item {index} ({item_id}): "
    if dataset is None:
        dataset = item_id.rsplit("_", 1)[0]
        if dataset not in DATASETS:
            raise DataError(f"{path}: {where}cannot infer the dataset from item_id; pass dataset= (one of {DATASETS})")
    is_program = annotation is not None and annotation.lstrip().startswith("def solution(")
    if annotation is not None and style == "program" and not is_program:
        raise DataError(f"{path}: {where}style='program' but answer_cot is not a 'def solution():' program")
    if annotation is not None and style == "nl" and is_program:
        raise DataError(f"{path}: {where}answer_cot is a program (a P-CoT file?); pass style='program'")
    options = None
    if dataset == "mathqa":
        options = _options(question)
        if options is None:
            raise DataError(f"{path}: {where}MathQA question has no inline options line ('a ) .. , b ) ..')")
        answer = answer.lower()
        letters = set(_OPTION.findall(options))
        if answer not in letters:
            raise DataError(f"{path}: {where}gold {answer!r} is not one of the option letters {sorted(letters)}")
    return Record(
        id=item_id,
        question=question,
        answer=answer,
        cot=annotation if style == "nl" else None,
        program=annotation if style == "program" else None,
        options=options,
        dataset=dataset,
    )


def load_reft_json(path: str | os.PathLike, dataset: str | None = None, style: str = "nl") -> list[Record]:
    """Load a ReFT-release JSON file (train or test, N-CoT or P-CoT).

    Args:
        path: the ``.json`` file.
        dataset: force the dataset name; None infers it per item from the ``item_id`` prefix.
        style: ``"nl"`` puts ``answer_cot`` in ``Record.cot``; ``"program"`` puts it in
            ``Record.program`` (and checks that it is a ``def solution():`` program).

    Returns:
        One `Record` per item, with ``id = item_id``.

    Raises:
        DataError: missing file, invalid JSON (with the parser's line:column), a non-list file, a
            bad item (with its index and line), duplicate ids, or an empty list.
    """
    if style not in ("nl", "program"):
        raise ValueError(f"style must be 'nl' or 'program', got {style!r}")
    if dataset is not None and dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS} or None, got {dataset!r}")
    text = read_text(path)
    try:
        items = json.loads(text)
    except json.JSONDecodeError as e:
        raise json_syntax_error(path, e) from e
    if not isinstance(items, list):
        raise located(path, f"expected a JSON list of items, got {type(items).__name__}")
    if not items:
        raise located(path, "no records (empty list)")
    records: list[Record] = []
    seen: set[str] = set()
    for index, item in enumerate(items):
        try:
            record = _record(item, index, path, dataset, style)
            if record.id in seen:
                raise DataError(f"{path}: item {index}: duplicate item_id {record.id!r}")
        except DataError as e:
            # Add the item's line to the message: `path:line: item 17 (...): ...`.
            raise DataError(str(e).replace(f"{path}: ", f"{path}:{_item_line(text, index)}: ", 1)) from e
        seen.add(record.id)
        records.append(record)
    return records
