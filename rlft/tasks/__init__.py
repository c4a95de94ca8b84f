"""Datasets as `Record`s: one entry point, `load_records`, for every source.

Sources:
- ``"arithmetic"``: the built-in generated task (`rlft.tasks.arithmetic`), split ``train``/``test``;
- ``path/to/file.jsonl``: official GSM8K (`rlft.tasks.gsm8k`), or conversational rows in TRL's forms
  (``messages``, or ``prompt`` + ``completion``; `rlft.tasks.conversational`), told apart by the first row;
- ``path/to/file.json``: a ReFT-release file, N-CoT or P-CoT (`rlft.tasks.mwp`);
- ``"hf:<name>"``: a Hugging Face dataset (`rlft.tasks.hf`), e.g. ``"hf:openai/gsm8k"`` with
  ``hf_kwargs={"config": "main"}``, or ``"hf:json"`` with ``hf_kwargs={"data_files": ...}``; datasets with a
  ``messages`` or ``prompt`` column load as conversational records.

Every loader raises `DataError` (a `ValueError`) naming the file and line on bad input.
"""

from __future__ import annotations

from rlft.tasks import arithmetic
from rlft.tasks.base import Record
from rlft.tasks.conversational import jsonl_is_conversational, load_conversational_jsonl
from rlft.tasks.errors import DataError
from rlft.tasks.gsm8k import load_gsm8k_jsonl
from rlft.tasks.hf import load_hf_dataset
from rlft.tasks.mwp import load_reft_json

__all__ = ["DataError", "Record", "load_records"]


def load_records(
    source: str,
    split: str,
    *,
    style: str = "nl",
    n: int | None = None,
    seed: int = 0,
    difficulty: int = 1,
    n_train: int = 1000,
    n_test: int = 200,
    hf_kwargs: dict | None = None,
    limit: int | None = None,
    cot_orders: str = "one",
) -> list[Record]:
    """Load one split of a dataset.

    Args:
        source: ``"arithmetic"``, a ``.jsonl``/``.json`` path, or ``"hf:<name>"``.
        split: ``"train"`` or ``"test"`` for arithmetic; the id prefix for JSONL files
            (``gsm8k_{split}_{i}``); the split for Hugging Face; unused for ReFT ``.json`` files
            (one file is one split, ids are the file's ``item_id``).
        style: ``"nl"`` or ``"program"``: which annotation a ReFT ``.json`` file holds.
        n: arithmetic only: the size of the requested split (overrides n_train or n_test).
        seed: arithmetic only: the generator seed.
        difficulty: arithmetic only: 1, 2, 3, ... (see `rlft.tasks.arithmetic`).
        n_train: arithmetic only: the train size. Train and test are disjoint for one
            (seed, difficulty, n_test); the test split does not depend on n_train.
        n_test: arithmetic only: the test size.
        cot_orders: arithmetic only: ``one`` or ``varied`` (`rlft.tasks.arithmetic.make_splits`).
        hf_kwargs: Hugging Face only: keyword arguments of `rlft.tasks.hf.load_hf_dataset`
            (``config``, ``question_field``, ``answer_field``, ``cot_field``, ``answer_format``,
            ``dataset``, ``data_files``).
        limit: keep only the first `limit` records (any source).

    Returns:
        The records.

    Raises:
        DataError: an unknown source, or bad data (see the loaders).
        ValueError: a bad split or style.
    """
    if style not in ("nl", "program"):
        raise ValueError(f"style must be 'nl' or 'program', got {style!r}")
    if source == "arithmetic":
        if split not in ("train", "test"):
            raise ValueError(f"the arithmetic task has splits 'train' and 'test', got {split!r}")
        if n is not None:
            n_train, n_test = (n, n_test) if split == "train" else (n_train, n)
        # The test split never depends on n_train, so generate no train problems when asked for test.
        n_train = n_train if split == "train" else 0
        train, test = arithmetic.make_splits(n_train, n_test, seed=seed, difficulty=difficulty, cot_orders=cot_orders)
        records = train if split == "train" else test
    elif source.startswith("hf:"):
        records = load_hf_dataset(source[3:], split, **(hf_kwargs or {}))
    elif source.endswith(".jsonl") and jsonl_is_conversational(source):
        records = load_conversational_jsonl(source, split_name=split)
    elif source.endswith(".jsonl"):
        records = load_gsm8k_jsonl(source, split_name=split)
    elif source.endswith(".json"):
        records = load_reft_json(source, style=style)
    else:
        expected = "'arithmetic', a .jsonl or .json file, or 'hf:<name>'"
        raise DataError(f"{source}: unknown data source (expected {expected})")
    return records[:limit] if limit is not None else records
