"""Trainer data loading: rows in the project schema load; bad rows and bad files fail naming file and row/line."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from srpo_megatron.data.dataset import load_rows

HUMANEVAL_TESTS = {"test_code": ["def check(candidate):\n    assert candidate(2) == 4\n"], "entry_point": "double"}


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def test_rows_of_every_test_kind_load(tmp_path):
    code = write_jsonl(tmp_path / "code.jsonl", [
        {"id": "c1", "domain": "code", "prompt": "Double x.", "tests": json.dumps(HUMANEVAL_TESTS)},
        {"prompt": "Sum.", "tests": json.dumps({"inputs": ["1 2\n"], "outputs": ["3\n"]})},
    ])
    rows = load_rows([code], "code")
    assert rows[0]["tests"] == HUMANEVAL_TESTS and rows[0]["id"] == "c1"
    assert [row["domain"] for row in rows] == ["code", "code"] and rows[1]["id"] == "code-1"


@pytest.mark.parametrize("declared", ["chem", "code"])
def test_row_of_another_domain_is_an_error(tmp_path, declared):
    math = write_jsonl(tmp_path / "math.jsonl", [
        {"domain": "math", "prompt": "1+1?", "answer": "2"},
        {"domain": declared, "prompt": "What is NaCl?", "answer": "salt"},
    ])
    with pytest.raises(ValueError, match=rf"math.jsonl row 1: 'domain' is '{declared}' but the file is listed "
                                         r"in data.math; valid domains: \['code', 'math'\]"):
        load_rows([math], "math")


def test_parquet_row_of_unknown_domain_is_an_error(tmp_path):
    path = tmp_path / "rows.parquet"
    pq.write_table(pa.Table.from_pylist([{"id": "a", "domain": "chem", "prompt": "p", "answer": "1"}]), path)
    with pytest.raises(ValueError, match=r"rows.parquet row 0: 'domain' is 'chem'"):
        load_rows([str(path)], "math")


@pytest.mark.parametrize("text", ["", "\n  \n"])
def test_empty_file_is_named(tmp_path, text):
    (tmp_path / "empty.jsonl").write_text(text)
    with pytest.raises(ValueError, match=r"empty.jsonl is empty"):
        load_rows([str(tmp_path / "empty.jsonl")], "math")


def test_non_json_line_names_file_and_line(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"prompt": "1+1?", "answer": "2"}\n{"prompt": "2+2?", "answer": 4,\n')
    with pytest.raises(ValueError, match=r"bad.jsonl: line 2 is not valid JSON"):
        load_rows([str(tmp_path / "bad.jsonl")], "math")


@pytest.mark.parametrize(("tests", "message"), [
    ("{not json", r"code.jsonl row 0: 'tests' is not valid JSON"),
    (json.dumps({"test_code": ["assert double(2) =="]}), r"code.jsonl row 0: 'tests': 'test_code\[0\]' is not valid"),
    (json.dumps({"inputs": ["1"]}), r"code.jsonl row 0: 'tests': code tests must be a dict with 'inputs' and"),
])
def test_bad_code_tests_name_the_row(tmp_path, tests, message):
    code = write_jsonl(tmp_path / "code.jsonl", [{"prompt": "Double x.", "tests": tests}])
    with pytest.raises(ValueError, match=message):
        load_rows([code], "code")


def test_missing_and_unsupported_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_rows([str(tmp_path / "nope.jsonl")], "math")
    (tmp_path / "rows.txt").write_text("x")
    with pytest.raises(ValueError, match=r"rows.txt: unsupported data format '.txt'"):
        load_rows([str(tmp_path / "rows.txt")], "math")
