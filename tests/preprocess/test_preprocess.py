"""Preprocessing: schema mapping, verification, dedup, decontamination and difficulty grading.

The end-to-end run reads planted jsonl/parquet sets with one row per failure mode and grades them
with an oracle tiny model that always answers `\\boxed{7}` (tests/eval/oracle_model.py), so every
count in report.json and every pass rate is known exactly. One vLLM engine is built (in `main`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from srpo_megatron.preprocess.__main__ import main
from srpo_megatron.preprocess.dedup import DecontaminationConfig, Decontaminator, normalise_text, split_duplicates
from srpo_megatron.preprocess.difficulty import DifficultyConfig, grade_difficulty
from srpo_megatron.preprocess.schemas import RowError, dataset_name, load_table, map_row
from srpo_megatron.rewards.combine import RewardConfig, RewardScorer
from srpo_megatron.rollout.types import Rollout
from tests.eval.oracle_model import make_oracle_model

AIME = ("Every morning Aya goes for a 9-kilometer-long walk and stops at a coffee shop afterwards. When she "
        "walks at a constant speed of s kilometers per hour, the walk takes her 4 hours, including t minutes "
        "spent in the coffee shop.")
AIME_COPY = AIME.upper().replace(" ", "  ").replace("4 hours", "four hours")  # layout and one word changed
LCB = ("You are given a string S of length N consisting of lowercase English letters. Find the number of "
       "positions i such that S_i equals S_{i+1} and print the answer.")
SUM_TESTS = json.dumps({"inputs": ["1 2\n", "3 4\n"], "outputs": ["3\n", "7\n"]})
HANG = "\\boxed{5^{5^{5^5}}}"  # math-verify never returns on this: the worker must be killed

MATH_JSONL = [
    {"id": "m-ok", "problem": "What is 2+3?", "answer": "5", "solution": "2+3 = \\boxed{5}"},
    {"id": "m-nosol", "problem": "Compute 6 times 7.", "answer": "42"},
    {"id": "m-blank", "problem": "Name the smallest prime.", "answer": "  "},  # missing_answer
    {"id": "m-absent", "problem": "Name the largest prime below 10."},  # missing_answer
    {"id": "m-unparse", "problem": "What is the symbol for nothing?", "answer": "???"},  # unparseable_answer
    {"id": "m-mismatch", "problem": "What is 10-4?", "answer": "6", "solution": "10-4 = \\boxed{5}"},
    {"id": "m-hang", "problem": "What is 1+2?", "answer": "3", "solution": f"It is {HANG}"},  # mismatch (timeout)
    {"id": "m-int", "problem": 123, "answer": "1"},  # malformed: non-string prompt
    {"id": "m-dup", "problem": "  WHAT is   2+3? ", "answer": "5"},  # duplicate of m-ok
    {"id": "m-aime", "problem": AIME_COPY, "answer": "204"},  # contaminated
    {"prompt": [{"role": "user", "content": "Find x if x + 1 = 8."}], "data_source": "math_dapo",
     "reward_model": {"ground_truth": "7", "style": "rule"}, "extra_info": {"index": "dapo-1"}},  # too_easy
]
MATH_PARQUET = [  # DeepScaleR style, no id column
    {"problem": "What is 9+9?", "answer": "18", "solution": "9+9=\\boxed{18}"},
    {"problem": "what is 9+9?", "answer": "18", "solution": "\\boxed{18}"},  # duplicate
    {"problem": "Compute 6 times 7.", "answer": "42", "solution": ""},  # duplicate across files
]
CODE_JSONL = [  # APPS style
    {"problem_id": 1, "question": "Read two integers and print their sum.", "input_output": SUM_TESTS,
     "solutions": json.dumps(["a, b = map(int, input().split())\nprint(a + b)"])},
    {"problem_id": 2, "question": "Print hello.", "input_output": "", "solutions": json.dumps(["print('hello')"])},
    {"problem_id": 3, "question": "Read n and print n squared.",
     "input_output": json.dumps({"inputs": ["3\n"], "outputs": ["9\n"]}),
     "solutions": json.dumps(["print(int(input()) * 2)"])},  # failing_reference_solution
    {"problem_id": 4, "question": "Reverse a string.", "input_output": "{not json", "solutions": "[]"},  # malformed
    {"problem_id": 5, "question": "read two integers and print their SUM.", "input_output": SUM_TESTS},  # duplicate
    {"problem_id": 6, "question": f"  {LCB}  ", "input_output": json.dumps({"inputs": ["a\n"], "outputs": ["0\n"]})},
    {"problem_id": 7, "question": "Write a function add(a, b) that returns a + b.",
     "input_output": json.dumps({"fn_name": "add", "inputs": [[1, 2], [5, 5]], "outputs": [3, 10]}),
     "solutions": json.dumps(["def add(a, b):\n    return a + b"])},
    {"problem_id": 8, "question": "", "input_output": SUM_TESTS},  # malformed: empty prompt
]
CODE_PARQUET = [  # LiveCodeBench style
    {"question_id": "lcb-1", "question_content": "Given N, print N+1.", "fn_name": None, "starter_code": "",
     "public_test_cases": json.dumps([{"input": "1\n", "output": "2\n", "testtype": "stdin"}])},
    {"question_id": "lcb-2", "question_content": "Implement twice(x) returning 2*x.", "fn_name": "twice",
     "starter_code": "class Solution:\n    def twice(self, x: int) -> int:\n        ",
     "public_test_cases": json.dumps([{"input": "3", "output": "6", "testtype": "functional"}])},
]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def write_parquet(path: Path, rows: list[dict]) -> Path:
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def prompt_hash(text: str) -> str:
    return hashlib.sha256(" ".join(text.split()).casefold().encode()).hexdigest()[:16]


@pytest.fixture(scope="module")
def oracle_model(tiny_qwen, tmp_path_factory) -> Path:
    return make_oracle_model(tiny_qwen, tmp_path_factory.mktemp("oracle"), "\\boxed{7}")


@pytest.fixture(scope="module")
def run(oracle_model, tmp_path_factory) -> tuple[Path, dict]:
    data = tmp_path_factory.mktemp("data")
    out = data / "out"
    argv = [
        "--math", str(write_jsonl(data / "math_mixed.jsonl", MATH_JSONL)),
        str(write_parquet(data / "math_deepscaler.parquet", MATH_PARQUET)),
        "--code", str(write_jsonl(data / "code_apps.jsonl", CODE_JSONL)),
        str(write_parquet(data / "code_lcb.parquet", CODE_PARQUET)),
        "--eval-sets", str(write_jsonl(data / "aime.jsonl", [{"ID": "2024-I-1", "Problem": AIME, "Answer": "204"}])),
        str(write_jsonl(data / "lcb.jsonl", [{"question_id": "e1", "question_content": LCB}])),
        "--out", str(out), "--keep-rejects", "--cache-dir", str(data / "hf-cache"), "--math-timeout", "3",
        "--model", str(oracle_model), "--samples", "4", "--max-tokens", "8", "--max-model-len", "512",
        "--dtype", "float32", "--enforce-eager", "--cpu-kvcache-gib", "0.25",
    ]
    assert main(argv) == 0
    return out, json.loads((out / "report.json").read_text())


def test_report_counts_every_reason(run) -> None:
    _, report = run
    assert report["math"]["read"] == 14 and report["math"]["kept"] == 3
    assert report["math"]["dropped"] == {
        "malformed": 1, "missing_answer": 2, "contaminated": 1, "unparseable_answer": 1,
        "solution_mismatch": 2, "duplicate": 3, "too_easy": 1,
    }
    assert report["code"]["read"] == 10 and report["code"]["kept"] == 4
    assert report["code"]["dropped"] == {
        "malformed": 2, "missing_tests": 1, "contaminated": 1, "failing_reference_solution": 1,
        "duplicate": 1, "too_easy": 0,
    }
    assert report["math"]["difficulty"] == {"easy": 0, "medium": 0, "hard": 0, "unsolved": 3}
    assert report["code"]["difficulty"] == {"easy": 0, "medium": 0, "hard": 0, "unsolved": 4}
    assert report["histogram"] == "difficulty.png" and report["rejects"] == "rejects.jsonl"
    assert report["settings"]["difficulty"]["samples"] == 4


def test_kept_rows_in_parquet(run) -> None:
    out, _ = run
    math = pq.read_table(out / "stage1_math.parquet").to_pylist()
    assert [r["id"] for r in math] == ["m-ok", "m-nosol", prompt_hash("What is 9+9?")]
    assert [r["answer"] for r in math] == ["5", "42", "18"]
    assert [r["source"] for r in math] == ["math_mixed", "math_mixed", "math_deepscaler"]
    assert {(r["domain"], r["pass_rate"], r["difficulty"]) for r in math} == {("math", 0.0, "unsolved")}
    code = pq.read_table(out / "stage2_code.parquet")
    assert code.column_names == ["id", "domain", "prompt", "tests", "source", "pass_rate", "difficulty"]
    rows = code.to_pylist()
    assert [r["id"] for r in rows] == ["1", "7", "lcb-1", "lcb-2"]
    assert json.loads(rows[0]["tests"]) == json.loads(SUM_TESTS)
    assert json.loads(rows[1]["tests"])["fn_name"] == "add"
    assert json.loads(rows[2]["tests"]) == {"inputs": ["1\n"], "outputs": ["2\n"]}
    assert json.loads(rows[3]["tests"]) == {"inputs": ["3"], "outputs": ["6"], "fn_name": "twice"}
    assert rows[3]["prompt"].startswith("Implement twice(x)") and "class Solution:" in rows[3]["prompt"]
    assert (out / "difficulty.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_rejects_file_names_each_row(run) -> None:
    out, report = run
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    by_id = {(r["domain"], r["id"]): r for r in rejects}
    assert len(rejects) == sum(report[d]["dropped"][k] for d in ("math", "code") for k in report[d]["dropped"])
    assert by_id[("math", "m-int")]["reason"] == "malformed" and "string" in by_id[("math", "m-int")]["detail"]
    hang = by_id[("math", "m-hang")]
    assert hang["reason"] == "solution_mismatch" and "did not finish within 3 s" in hang["detail"]
    assert by_id[("math", "m-dup")]["detail"].startswith("same text as m-ok")
    assert by_id[("code", "4")]["reason"] == "malformed" and "JSON" in by_id[("code", "4")]["detail"]
    assert by_id[("code", "3")]["detail"].startswith("solution 1: test 1/1: wrong answer")
    assert by_id[("code", "6")]["reason"] == "contaminated"
    easy = by_id[("math", "dapo-1")]
    assert easy["reason"] == "too_easy" and easy["row"]["pass_rate"] == 1.0 and easy["row"]["difficulty"] == "easy"
    assert easy["row"]["source"] == "math_dapo" and easy["row"]["answer"] == "7"
    assert by_id[("math", "m-int")]["origin"].endswith("math_mixed.jsonl:7")


def test_without_model_no_grading_columns(tmp_path) -> None:
    code = write_jsonl(tmp_path / "tiny_code.jsonl", [CODE_JSONL[4]])
    assert main(["--code", str(code), "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "c")]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["code"]["kept"] == 1 and "difficulty" not in report["code"] and report["histogram"] is None
    assert report["math"] == {"read": 0, "kept": 0, "dropped": dict.fromkeys(report["math"]["dropped"], 0),
                              "output": "stage1_math.parquet"}
    assert pq.read_table(tmp_path / "out" / "stage1_math.parquet").column_names == [
        "id", "domain", "prompt", "answer", "source"]
    assert not (tmp_path / "out" / "difficulty.png").exists() and not (tmp_path / "out" / "rejects.jsonl").exists()


def test_cli_errors_name_the_input(tmp_path, capsys) -> None:
    assert main(["--out", str(tmp_path)]) == 2
    assert "--math and/or --code" in capsys.readouterr().err
    assert main(["--math", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path)]) == 2
    assert "nope.jsonl does not exist" in capsys.readouterr().err


# --- units ------------------------------------------------------------------------------------------


def test_map_row_public_schemas() -> None:
    dapo = map_row(MATH_JSONL[-1], "math", "dapo", "f:0")
    assert (dapo.id, dapo.prompt, dapo.answer, dapo.source) == ("dapo-1", "Find x if x + 1 = 8.", "7", "math_dapo")
    aime = map_row({"ID": "2024-I-1", "Problem": "P", "Answer": 204}, "math", "aime", "f:0")
    assert (aime.id, aime.answer, aime.source) == ("2024-I-1", "204", "aime")
    taco = map_row({"question": "Q", "input_output": {"inputs": [[1]], "outputs": [2]}, "fn_name": "f",
                    "solutions": "def f(x): return x + 1"}, "code", "taco", "f:0")
    assert json.loads(taco.tests) == {"inputs": [[1]], "outputs": [2], "fn_name": "f"}
    assert taco.solutions == ("def f(x): return x + 1",) and taco.id == prompt_hash("Q")
    lcb = map_row({"question_content": "Q", "public_test_cases": '[{"input": "1\\n2", "output": "3"}]',
                   "metadata": '{"func_name": "add"}', "platform": "leetcode"}, "code", "lcb", "f:0")
    assert json.loads(lcb.tests) == {"inputs": ["1\n2"], "outputs": ["3"], "fn_name": "add"}
    for row, reason in [
        ({"problem": "p", "answer": None}, "missing_answer"),
        ({"problem": "p", "answer": {"a": 1}}, "malformed"),
        ({"problem": ["not", "chat"], "answer": "1"}, "malformed"),
        ({"question": "p", "tests": {"inputs": [], "outputs": []}}, "missing_tests"),
        ({"question": "p", "tests": {"inputs": ["1"], "outputs": []}}, "malformed"),
        ({"question": "p", "tests": [{"in": 1}]}, "malformed"),
        ({"question": "p", "tests": {"inputs": 5, "outputs": 5}}, "malformed"),
        ({"question": "p", "tests": {"inputs": ["1"], "outputs": ["1"]}, "solutions": [1]}, "malformed"),
    ]:
        domain = "math" if "problem" in row else "code"
        with pytest.raises(RowError) as err:
            map_row(row, domain, "x", "f:0")
        assert err.value.reason == reason, row


def test_dataset_names_and_read_errors(tmp_path) -> None:
    assert dataset_name("/data/DeepScaleR.parquet") == "DeepScaleR"
    assert dataset_name("BytedTsinghua-SIA/DAPO-Math-17k:train") == "DAPO-Math-17k"
    assert dataset_name("EleutherAI/hendrycks_math@algebra:test") == "hendrycks_math"
    (tmp_path / "rows.txt").write_text("x")
    with pytest.raises(ValueError, match="rows.txt"):
        load_table(str(tmp_path / "rows.txt"), cache_dir=str(tmp_path / "c"))


def test_dedup_and_decontamination() -> None:
    assert normalise_text("  What\tIS\n 2+3? ") == "what is 2+3?"
    checker = Decontaminator([AIME, LCB], DecontaminationConfig(ngram=8, threshold=0.5))
    assert checker.is_contaminated(AIME_COPY) and checker.overlap(AIME_COPY) > 0.5
    assert not checker.is_contaminated("What is 2+3?") and checker.overlap("Aya walks to a shop.") == 0.0
    half = " ".join(AIME.split()[:16]) + " and then something entirely different happens to her along the way home"
    assert 0.2 < checker.overlap(half) < 0.5 and not checker.is_contaminated(half)
    assert Decontaminator([AIME], DecontaminationConfig(ngram=8, threshold=0.2)).is_contaminated(half)
    with pytest.raises(ValueError, match="threshold must be in"):
        DecontaminationConfig(threshold=0.0)
    problems = [map_row(r, "math", "x", f"f:{i}") for i, r in enumerate(MATH_JSONL[:2] + MATH_JSONL[8:9])]
    kept, duplicates = split_duplicates(problems)
    assert [p.id for p in kept] == ["m-ok", "m-nosol"] and [(d.id, f.id) for d, f in duplicates] == [("m-dup", "m-ok")]


class PlantedEngine:
    """Stands in for RolloutEngine: returns the planted responses of each prompt, in order."""

    def __init__(self, responses: dict[str, list[str]]) -> None:
        self.responses = responses

    def generate(self, prompts: list[str], n: int) -> list[Rollout]:
        out = []
        for i, prompt in enumerate(prompts):
            for j, text in enumerate(self.responses[prompt][:n]):
                out.append(Rollout(i, j, [], [], text, None, "stop"))
        return out


def test_grade_difficulty_buckets_and_drops() -> None:
    rows = {"A": "1", "B": "2", "C": "3", "D": "4"}
    problems = [map_row({"problem": p, "answer": a}, "math", "x", f"f:{i}") for i, (p, a) in enumerate(rows.items())]
    correct = {"A": 0, "B": 1, "C": 2, "D": 4}  # of K = 4
    engine = PlantedEngine({p: [f"\\boxed{{{rows[p] if j < correct[p] else 0}}}" for j in range(4)] for p in rows})
    config = DifficultyConfig(samples=4, suffixes={"math": "", "code": ""})
    with RewardScorer(RewardConfig(math_workers=1)) as scorer:
        kept, too_easy = grade_difficulty(problems, engine, scorer, config)
    assert [(p.pass_rate, p.difficulty) for p in problems] == [
        (0.0, "unsolved"), (0.25, "hard"), (0.5, "medium"), (1.0, "easy")]
    assert [p.prompt for p in kept] == ["A", "B", "C"] and [r.reason for r in too_easy] == ["too_easy"]
    assert config.bucket(0.8) == "easy" and config.bucket(0.75) == "medium"
    with pytest.raises(ValueError, match="hard_max < medium_max"):
        DifficultyConfig(hard_max=0.8, medium_max=0.5)
