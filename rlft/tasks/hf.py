"""Any Hugging Face dataset, through `datasets.load_dataset`, as `Record`s.

Hub names work as usual (``load_hf_dataset("openai/gsm8k", "train", config="main")``), and so do
the generic builders on local files (``load_hf_dataset("json", "train", data_files="x.jsonl")``),
which is how the tests run offline. `datasets` is imported inside the function so that importing
`rlft.tasks` stays cheap.

A dataset with a ``messages`` column, or a ``prompt`` column and no `question_field` column, is
conversational (TRL's formats) and is read by `rlft.tasks.conversational` (gold answer from its ``answer`` or
``solution`` column).
"""

from __future__ import annotations

import re

from rlft.tasks.base import Record
from rlft.tasks.conversational import record_from_row
from rlft.tasks.errors import DataError, text_field
from rlft.tasks.gsm8k import parse_gsm8k_answer


def load_hf_dataset(
    name: str,
    split: str,
    *,
    config: str | None = None,
    question_field: str = "question",
    answer_field: str = "answer",
    cot_field: str | None = None,
    answer_format: str = "gsm8k",
    dataset: str = "gsm8k",
    data_files: str | list[str] | dict | None = None,
) -> list[Record]:
    """Load one split of a Hugging Face dataset.

    Args:
        name: a hub id (``"openai/gsm8k"``) or a builder name (``"json"``, ``"csv"``, ``"parquet"``).
        split: the split, with the usual slicing syntax allowed (``"train[:100]"``).
        config: the dataset configuration (``"main"`` for GSM8K).
        question_field: column with the question.
        answer_field: column with the answer.
        cot_field: column with an N-CoT annotation; None takes the CoT from a ``"gsm8k"`` answer.
        answer_format: ``"gsm8k"``: the answer column is a solution ending in ``#### value``, parsed
            like `rlft.tasks.gsm8k` (annotations removed, commas dropped from the value);
            ``"plain"``: the answer column is the final answer itself.
        dataset: the `Record.dataset` value (which checker rules apply).
        data_files: passed to `datasets.load_dataset` (local files for the generic builders).

    Returns:
        One `Record` per row, ids ``{dataset}_{split}_{i}`` (split without any slice).

    Raises:
        DataError: the dataset cannot be loaded, a column is missing, a row is bad (with its 0-based
            row index), or the split is empty.
    """
    if answer_format not in ("gsm8k", "plain"):
        raise ValueError(f"answer_format must be 'gsm8k' or 'plain', got {answer_format!r}")
    import datasets  # lazy: a heavy import, only needed on this path

    source = f"hf:{name}" + (f"/{config}" if config else "") + f"[{split}]"
    try:
        ds = datasets.load_dataset(name, config, split=split, data_files=data_files)
    except Exception as e:  # datasets raises many types (FileNotFound, DatasetNotFound, ValueError, ...)
        raise DataError(f"{source}: cannot load: {type(e).__name__}: {e}") from e
    if not isinstance(ds, datasets.Dataset):
        raise DataError(f"{source}: expected one split, got {type(ds).__name__}")
    split_id = re.sub(r"\W+", "", split.split("[", 1)[0]) or "split"
    if "messages" in ds.column_names or ("prompt" in ds.column_names and question_field not in ds.column_names):
        if len(ds) == 0:
            raise DataError(f"{source}: no records (empty split)")
        return [record_from_row(row, f"{dataset}_{split_id}_{i}", where=source, context=f"row {i}: ", dataset=dataset)
                for i, row in enumerate(ds)]
    wanted = [question_field, answer_field] + ([cot_field] if cot_field else [])
    missing = [f for f in wanted if f not in ds.column_names]
    if missing:
        raise DataError(f"{source}: missing field {missing[0]!r} (columns: {', '.join(ds.column_names)})")
    if len(ds) == 0:
        raise DataError(f"{source}: no records (empty split)")
    records = []
    for i, row in enumerate(ds):
        where = f"row {i}: "
        question = text_field(row, question_field, source, None, context=where)
        raw = text_field(row, answer_field, source, None, context=where, numbers_ok=True)
        cot = text_field(row, cot_field, source, None, context=where, required=False) if cot_field else None
        if answer_format == "gsm8k":
            try:
                parsed_cot, answer = parse_gsm8k_answer(raw)
            except ValueError as e:
                raise DataError(f"{source}: {where}field {answer_field!r}: {e}") from e
            cot = cot if cot_field else parsed_cot
        else:
            answer = raw.strip()
        record_id = f"{dataset}_{split_id}_{i}"
        records.append(Record(id=record_id, question=question.strip(), answer=answer, cot=cot, dataset=dataset))
    return records
