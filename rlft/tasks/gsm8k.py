"""GSM8K in its official JSONL form (``openai/grade-school-math``).

Each line is ``{"question": ..., "answer": ...}`` where the answer is the worked solution with
calculator annotations (``48/2 = <<48/2=24>>24``) and a final ``#### 72`` line. We drop the
annotations, so the CoT reads as the human solution, and take the gold from the ``####`` line with
thousands separators removed (``#### 1,250`` -> ``"1250"``), as ReFT does on its gold side.

The ReFT release's own GSM8K files (``item_id`` / ``answer_value``) are read by `rlft.tasks.mwp`.
"""

from __future__ import annotations

import os
import re

from rlft.tasks.base import Record
from rlft.tasks.errors import jsonl_rows, located, text_field

_CALC = re.compile(r"<<.*?>>")  # calculator annotations; never nested in GSM8K
_FINAL = re.compile(r"^####[ \t]*(.*?)[ \t]*$", re.M)


def parse_gsm8k_answer(text: str) -> tuple[str | None, str]:
    """Split a GSM8K solution into (clean CoT, gold answer).

    Args:
        text: the ``answer`` field: solution lines, then ``#### <value>``.

    Returns:
        The CoT with ``<<...>>`` annotations removed and whitespace stripped (None if the solution
        has no reasoning before the ``####`` line), and the value with commas removed.

    Raises:
        ValueError: there is no ``#### <value>`` line, or its value is empty.
    """
    finals = list(_FINAL.finditer(text))
    if not finals or not finals[-1].group(1):
        raise ValueError("no final '#### <value>' line")
    last = finals[-1]
    answer = last.group(1).replace(",", "")
    cot = _CALC.sub("", text[: last.start()]).strip()
    return cot or None, answer


def load_gsm8k_jsonl(path: str | os.PathLike, split_name: str = "train") -> list[Record]:
    """Load an official GSM8K JSONL file.

    Args:
        path: the ``.jsonl`` file (blank lines are skipped).
        split_name: used in the ids, ``gsm8k_{split_name}_{i}`` with i counting records from 0.

    Returns:
        One `Record` per line, ``dataset="gsm8k"``, the CoT in ``cot``.

    Raises:
        DataError: missing or unreadable file, invalid JSON, a missing/non-string field, a solution
            without a ``####`` line (all with ``path:line:``), or a file with no records.
    """
    records: list[Record] = []
    for line_no, row in jsonl_rows(path):
        question = text_field(row, "question", path, line_no)
        solution = text_field(row, "answer", path, line_no)
        try:
            cot, answer = parse_gsm8k_answer(solution)
        except ValueError as e:
            raise located(path, f"field 'answer': {e}", line_no) from e
        record_id = f"gsm8k_{split_name}_{len(records)}"
        records.append(Record(id=record_id, question=question.strip(), answer=answer, cot=cot))
    if not records:
        raise located(path, "no records (empty file)")
    return records
