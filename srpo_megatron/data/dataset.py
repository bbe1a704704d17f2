"""Loading training/eval rows (the project's row schema) with the `datasets` library."""

from __future__ import annotations

import json
from pathlib import Path

REQUIRED = {"math": "answer", "code": "tests"}
_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}


def load_rows(files: list[str], domain: str) -> list[dict]:
    """All rows of `files` for `domain`, validated: every row needs `prompt` and its domain's field.

    A bad row fails naming the file and row number; nothing is silently dropped (clean data with
    `python -m srpo_megatron.preprocess` first).
    """
    from datasets import load_dataset

    if domain not in REQUIRED:
        raise ValueError(f"unknown domain {domain!r}; valid: {sorted(REQUIRED)}")
    rows = []
    for file in files:
        suffix = Path(file).suffix
        if suffix not in _FORMATS:
            raise ValueError(f"{file}: unsupported data format {suffix!r}; use {sorted(_FORMATS)}")
        if not Path(file).exists():
            raise FileNotFoundError(f"data file {file} not found")
        dataset = load_dataset(_FORMATS[suffix], data_files=file, split="train")
        for number, row in enumerate(dataset):
            rows.append(_validated(dict(row), domain, file, number))
    return rows


def _validated(row: dict, domain: str, file: str, number: int) -> dict:
    where = f"{file} row {number}"
    if not isinstance(row.get("prompt"), str) or not row["prompt"].strip():
        raise ValueError(f"{where}: missing or empty 'prompt'")
    key = REQUIRED[domain]
    value = row.get(key)
    if value is None or value == "":
        raise ValueError(f"{where}: a {domain} row needs '{key}'")
    if domain == "code" and isinstance(value, str):
        try:
            row[key] = json.loads(value)
        except json.JSONDecodeError as err:
            raise ValueError(f"{where}: 'tests' is not valid JSON: {err}") from err
    row.setdefault("id", f"{Path(file).stem}-{number}")
    row["domain"] = domain
    return row
