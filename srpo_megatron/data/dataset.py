"""Loading training/eval rows (the project's row schema) with the `datasets` library."""

from __future__ import annotations

import json
from pathlib import Path

REQUIRED = {"math": "answer", "code": "tests"}
_FORMATS = (".jsonl", ".json", ".parquet")


def load_rows(files: list[str], domain: str) -> list[dict]:
    """All rows of `files` for `domain`, validated: every row needs `prompt` and its domain's field.

    A bad row fails naming the file and row number, a bad file naming the file (and the line of JSON
    that does not parse); nothing is silently dropped (clean data with `python -m srpo_megatron.preprocess`
    first, which reads files the same way).
    """
    from srpo_megatron.preprocess.schemas import load_table

    if domain not in REQUIRED:
        raise ValueError(f"unknown domain {domain!r}; valid: {sorted(REQUIRED)}")
    rows = []
    for file in files:
        suffix = Path(file).suffix
        if suffix not in _FORMATS:
            raise ValueError(f"{file}: unsupported data format {suffix!r}; use {list(_FORMATS)}")
        for number, row in enumerate(load_table(file)):
            rows.append(_validated(dict(row), domain, file, number))
    return rows


def _validated(row: dict, domain: str, file: str, number: int) -> dict:
    from srpo_megatron.rewards.code import parse_tests

    where = f"{file} row {number}"
    declared = row.get("domain")
    if declared not in (None, "", domain):  # a row's own domain must match the list it is in
        raise ValueError(f"{where}: 'domain' is {declared!r} but the file is listed in data.{domain}; valid "
                         f"domains: {sorted(REQUIRED)} (list the file under its domain or fix the row)")
    if not isinstance(row.get("prompt"), str) or not row["prompt"].strip():
        raise ValueError(f"{where}: missing or empty 'prompt'")
    key = REQUIRED[domain]
    value = row.get(key)
    if value is None or value == "":
        raise ValueError(f"{where}: a {domain} row needs '{key}'")
    if domain == "code":
        try:
            row[key] = json.loads(value) if isinstance(value, str) else value
            parse_tests(row[key])  # the reward's own parser: a bad row fails here, not mid-training
        except json.JSONDecodeError as err:
            raise ValueError(f"{where}: 'tests' is not valid JSON: {err}") from err
        except (TypeError, ValueError) as err:
            raise ValueError(f"{where}: 'tests': {err}") from err
    if row.get("id") in (None, ""):  # `datasets` fills a column missing from some rows with None
        row["id"] = f"{Path(file).stem}-{number}"
    row["domain"] = domain
    return row
