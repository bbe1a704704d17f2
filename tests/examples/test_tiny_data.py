"""The tiny demo's synthetic data (examples/tiny_cpu/make_data.py) and the SFT warm-up tool."""

from __future__ import annotations

import ast
import json
import operator
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from srpo_megatron.rewards.code import code_reward
from srpo_megatron.rewards.format import format_reward
from srpo_megatron.rewards.math import GradingPool, math_reward_batch
from tests.examples.scripts import load_script
from tools import sft_warmup

ROOT = Path(__file__).resolve().parents[2]
FILES = ("train_math.jsonl", "train_code.jsonl", "eval_math.jsonl", "eval_code.jsonl")
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul}


make_data = load_script("tiny_make_data", "examples/tiny_cpu/make_data.py")


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny-data")
    make_data.make_data(out)
    return out


def _arithmetic(expression: str) -> int:
    """Evaluate + - * and parentheses over integer literals, independently of make_data."""

    def value(node: ast.AST) -> int:
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](value(node.left), value(node.right))
        raise AssertionError(f"unexpected syntax in {expression!r}")

    return value(ast.parse(expression, mode="eval").body)


def _expression(prompt: str) -> str:
    match = re.search(r"[\d(][\d\s+\-*()]*(?=[?.]$)", prompt)
    assert match, f"no arithmetic expression at the end of {prompt!r}"
    return match.group(0)


def _function(response: str, name: str):
    """The function `name` defined by the last python block of `response`."""
    program = response.rsplit("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict = {}
    exec(program, namespace)  # noqa: S102 - our own generated reference solutions
    return namespace[name]


def test_rows_follow_the_schema(data_dir):
    ids = []
    for name in FILES:
        rows = _read(data_dir / name)
        split, domain = name.removesuffix(".jsonl").split("_")
        assert len(rows) == make_data.SIZES[f"{split}_{domain}"]
        for row in rows:
            assert row["domain"] == domain and row["source"] == "synthetic"
            assert isinstance(row["id"], str) and row["prompt"].strip()
            if domain == "math":
                assert set(row) == {"id", "domain", "prompt", "answer", "source"}
                assert isinstance(row["answer"], str)
            else:
                assert set(row) == {"id", "domain", "prompt", "tests", "source"}
                tests = row["tests"]
                assert f"`{tests['fn_name']}(" in row["prompt"]
                assert 3 <= len(tests["inputs"]) == len(tests["outputs"]) <= 5
            ids.append(row["id"])
    sft = _read(data_dir / make_data.SFT_FILE)
    ids += [row["id"] for row in sft]
    assert len(ids) == len(set(ids))
    assert {row["domain"] for row in sft} == {"math", "code"}


def test_output_is_deterministic_and_seeded(data_dir, tmp_path):
    make_data.make_data(tmp_path / "again")
    make_data.make_data(tmp_path / "other", seed=1)
    for name in FILES + (make_data.SFT_FILE,):
        assert (tmp_path / "again" / name).read_bytes() == (data_dir / name).read_bytes()
        assert (tmp_path / "other" / name).read_bytes() != (data_dir / name).read_bytes()


def test_no_prompt_is_in_two_files(data_dir):
    names = FILES + (make_data.SFT_FILE,)
    prompts = {name: {row["prompt"] for row in _read(data_dir / name)} for name in names}
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not prompts[a] & prompts[b], (a, b)


def test_math_answers_are_the_arithmetic_result(data_dir):
    for name in ("train_math.jsonl", "eval_math.jsonl"):
        for row in _read(data_dir / name):
            assert row["answer"] == str(_arithmetic(_expression(row["prompt"]))), row
    for row in _read(data_dir / make_data.SFT_FILE):
        if row["domain"] == "math":
            boxed = row["response"].rsplit("\\boxed{", 1)[1].rstrip("}")
            assert boxed == str(_arithmetic(_expression(row["prompt"]))), row


def test_math_scratchpad_is_the_running_total_of_the_prompt(data_dir):
    """Each step applies the prompt's next operand to the previous total, inside [0, MAX_TOTAL]:
    the procedure the warm-up teaches and RL sharpens is the same on every problem."""
    lengths = set()
    for row in _read(data_dir / make_data.SFT_FILE):
        if row["domain"] != "math" or not row["response"].startswith("<think>"):
            continue
        first, *rest = re.findall(r"[+-] \d+|\d+", _expression(row["prompt"]))
        steps = re.findall(r"(\d+) ([+-]) (\d+) = (\d+)", row["response"])
        assert len(steps) == len(rest), row
        total = int(first)
        for (before, op, digit, after), operand in zip(steps, rest, strict=True):
            assert f"{op} {digit}" == operand and int(before) == total and 1 <= int(digit) <= 9, row
            total = _arithmetic(f"{total} {operand}")
            assert int(after) == total and 0 <= total <= make_data.MAX_TOTAL, row
        lengths.add(len(steps))
    assert lengths == set(make_data.CHAIN_STEPS)


def test_split_sizes_are_validated():
    with pytest.raises(ValueError, match="unknown split sizes .'train'.; valid"):
        make_data.build_splits(train=10)


def test_code_tests_agree_with_the_reference_solution(data_dir):
    splits = make_data.build_splits()
    for split in ("train", "eval"):
        problems = splits[split, "code"]
        rows = _read(data_dir / f"{split}_code.jsonl")
        for problem, row in zip(problems, rows, strict=True):
            tests = row["tests"]
            fn = _function(problem.response, tests["fn_name"])
            assert [fn(*args) for args in tests["inputs"]] == tests["outputs"], row
    for row in _read(data_dir / make_data.SFT_FILE):
        if row["domain"] == "code":
            name = re.search(r"`(\w+)\(", row["prompt"]).group(1)
            assert callable(_function(row["response"], name))


def test_reference_responses_earn_full_reward():
    """The formats the warm-up teaches, worked and bare, are the ones the reward functions grade;
    only the worked one carries the think block."""
    splits = make_data.build_splits()
    math_problems, code_problems = splits["train", "math"][:6], splits["train", "code"][:6]
    with GradingPool(workers=1, timeout_s=30.0) as pool:
        for kind in ("response", "bare_response"):
            responses = [getattr(p, kind) for p in math_problems]
            results = math_reward_batch(responses, [p.row["answer"] for p in math_problems], pool=pool)
            assert [r.score for r in results] == [1.0] * 6, (kind, results)
    for problem in code_problems:
        assert code_reward(problem.response, problem.row["tests"]).score == 1.0, problem
        assert code_reward(problem.bare_response, problem.row["tests"]).score == 1.0, problem
    for problem in math_problems + code_problems:
        assert format_reward(problem.response).score == 1.0, problem.response
        assert "<think>" not in problem.bare_response and problem.bare_response in problem.response


def test_warmup_corpus_mixes_worked_and_bare_answers(data_dir):
    for domain in ("math", "code"):
        rows = [row for row in _read(data_dir / make_data.SFT_FILE) if row["domain"] == domain]
        worked = sum(row["response"].startswith("<think>") for row in rows) / len(rows)
        assert abs(worked - make_data.WORKED_SHARE) < 0.05, (domain, worked)


def test_cache_key_follows_arguments_and_data(data_dir, tmp_path):
    def key(data: Path, *extra: str) -> str:
        args = sft_warmup._parser().parse_args(["--data", str(data), "--out", "x", *extra])
        return sft_warmup.cache_key(args)

    assert key(data_dir) == key(data_dir, "--threads", "1")
    assert key(data_dir) != key(data_dir, "--seed", "1")
    copy = tmp_path / "data"
    copy.mkdir()
    for name in (sft_warmup.SFT_FILE, *sft_warmup.TRAIN_FILES.values()):
        (copy / name).write_bytes((data_dir / name).read_bytes())
    assert key(copy) == key(data_dir)
    (copy / "sft.jsonl").write_text((data_dir / "sft.jsonl").read_text()[:-200])
    assert key(copy) != key(data_dir)


def test_sft_warmup_trains_saves_and_caches(data_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    argv = ["--data", str(data_dir), "--out", str(tmp_path), "--steps", "10", "--batch-size", "8",
            "--eval-rows", "4"]
    info = sft_warmup.run(argv)
    assert not info["cached"] and info["loss_last"] < info["loss_first"]
    for domain in ("math", "code"):
        assert set(info["accuracy"][domain]) == {"greedy", "temperature_1"}
        assert all(0.0 <= value <= 1.0 for value in info["accuracy"][domain].values())
    model_dir = Path(info["model"])
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    assert model.config.num_attention_heads == 4 and model.config.num_key_value_heads == 2
    assert (model_dir / "model.safetensors").is_file()
    generation_config = json.loads((model_dir / "generation_config.json").read_text())
    assert generation_config["eos_token_id"] == tokenizer.eos_token_id
    assert tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                         add_generation_prompt=True).endswith("<|im_start|>assistant\n")

    start = time.perf_counter()
    assert sft_warmup.run(argv) == {**info, "cached": True}
    assert time.perf_counter() - start < 1.0
    cli = subprocess.run([sys.executable, str(ROOT / "tools/sft_warmup.py"), *argv], capture_output=True,
                         text=True, check=True, timeout=60, cwd=tmp_path)
    assert json.loads(cli.stdout) == {**info, "cached": True}
