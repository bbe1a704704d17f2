"""Evaluation: avg@k / pass@1 of planted responses (hand-computed), the model-directory rules, and
the CLI end to end with an oracle tiny model that always answers `\\boxed{7}` (one vLLM engine).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from srpo_megatron.eval.__main__ import main
from srpo_megatron.eval.evaluate import EvalConfig, load_eval_rows
from srpo_megatron.rollout.sampling import CHECKPOINT_MARKER, hf_model_dir
from srpo_megatron.rewards.scoring import score_responses
from srpo_megatron.rewards.combine import RewardConfig, RewardScorer
from tests.eval.oracle_model import make_oracle_model


def fenced(program: str) -> str:
    return f"Here it is.\n```python\n{program}\n```"


@pytest.fixture(scope="module")
def scorer():
    with RewardScorer(RewardConfig(math_workers=1, code_workers=2)) as s:
        yield s


def test_math_avg_at_k_of_planted_responses(scorer) -> None:
    rows = [
        {"id": "a", "domain": "math", "answer": "5"},
        {"id": "b", "domain": "math", "answer": "\\frac{1}{2}"},
        {"id": "c", "domain": "math", "answer": "3"},
    ]
    responses = [
        ["\\boxed{5}", "so 5.0 is it: \\boxed{5.0}", "\\boxed{6}", "no answer at all"],  # 2 / 4
        ["\\boxed{0.5}", "\\boxed{1/2}", "\\boxed{\\frac12}", "\\boxed{2}"],  # 3 / 4
        ["\\boxed{4}", "\\boxed{4}", "\\boxed{4}", "Answer: 2"],  # 0 / 4
    ]
    result = score_responses(rows, responses, scorer=scorer)
    assert result["pass@1"] == pytest.approx((2 / 4 + 3 / 4 + 0 / 4) / 3)
    assert result["pass@k"] == pytest.approx(2 / 3)
    assert (result["n_problems"], result["n_samples"]) == (3, 12)
    first = result["problems"][0]
    assert (first["id"], first["correct"], first["pass_rate"], first["scores"]) == ("a", 2, 0.5, [1.0, 1.0, 0.0, 0.0])
    assert first["reasons"][2:] == ["wrong answer", "no final answer found"]
    assert first["responses"] == responses[0]


def test_code_pass_at_1_of_planted_programs(scorer) -> None:
    rows = [
        {"id": "sum", "domain": "code", "tests": json.dumps({"inputs": ["1 2\n", "3 4\n"], "outputs": ["3\n", "7\n"]})},
        {"id": "add", "domain": "code", "tests": {"fn_name": "add", "inputs": [[1, 2]], "outputs": [3]}},
    ]
    responses = [
        [fenced("a, b = map(int, input().split())\nprint(a + b)"), fenced("print(3)"), "I cannot solve this."],
        [fenced("def add(a, b):\n    return a + b"), fenced("def add(a, b):\n    return a / 0")],
    ]
    result = score_responses(rows, responses, scorer=scorer)
    assert [p["scores"] for p in result["problems"]] == [[1.0, 0.0, 0.0], [1.0, 0.0]]
    assert result["pass@1"] == pytest.approx((1 / 3 + 1 / 2) / 2) and result["pass@k"] == 1.0
    assert "ZeroDivisionError" in result["problems"][1]["reasons"][1]


def test_score_responses_rejects_bad_shapes(scorer) -> None:
    with pytest.raises(ValueError, match="2 rows but 1 response lists"):
        score_responses([{"id": "a"}, {"id": "b"}], [["x"]], scorer=scorer)
    with pytest.raises(ValueError, match=r"rows \['a'\] have no responses"):
        score_responses([{"id": "a", "domain": "math", "answer": "1"}], [[]], scorer=scorer)


def test_model_dir_hf_or_megatron_checkpoint(tmp_path, monkeypatch) -> None:
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    with hf_model_dir(hf) as resolved:
        assert resolved == hf
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / CHECKPOINT_MARKER).write_text("{}")
    calls = []

    def fake_convert(ckpt_dir, out_dir):
        calls.append((Path(ckpt_dir), Path(out_dir)))
        (Path(out_dir) / "config.json").write_text("{}")
        return Path(out_dir)

    monkeypatch.setattr("srpo_megatron.convert.mcore_to_hf.convert_mcore_to_hf", fake_convert)
    with hf_model_dir(ckpt) as resolved:
        assert calls == [(ckpt, resolved)] and (resolved / "config.json").is_file()
    assert not resolved.exists()  # the temporary conversion is removed afterwards
    with pytest.raises(FileNotFoundError, match="no config.json"):
        with hf_model_dir(tmp_path):
            pass


def test_eval_rows_must_all_be_gradable(tmp_path) -> None:
    data = tmp_path / "aime.jsonl"
    data.write_text(json.dumps({"ID": "1", "Problem": "P1", "Answer": "3"}) + "\n"
                    + json.dumps({"ID": "2", "Problem": "P2"}) + "\n")
    with pytest.raises(ValueError, match=r"1 rows cannot be evaluated.*aime.jsonl:1: missing_answer"):
        load_eval_rows(str(data), "math", cache_dir=str(tmp_path / "c"))
    with pytest.raises(ValueError, match="k \\(samples per problem\\) must be >= 1"):
        EvalConfig(model="m", data=str(data), domain="math", k=0)


def test_cli_end_to_end_with_oracle_model(tiny_qwen, tmp_path) -> None:
    model = make_oracle_model(tiny_qwen, tmp_path / "oracle", "\\boxed{7}")
    data = tmp_path / "aime.jsonl"
    rows = [{"ID": "p1", "Problem": "What is 3+4?", "Answer": "7"},
            {"ID": "p2", "Problem": "What is 4+4?", "Answer": "8"},
            {"ID": "p3", "Problem": "What is 1+6?", "Answer": "7"}]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "result.json"
    argv = ["--model", str(model), "--math", str(data), "--k", "2", "--out", str(out), "--temperature", "1.0",
            "--max-tokens", "8", "--max-model-len", "256", "--dtype", "float32", "--enforce-eager",
            "--cpu-kvcache-gib", "0.25", "--cache-dir", str(tmp_path / "c")]
    assert main(argv) == 0
    result = json.loads(out.read_text())
    assert result["pass@1"] == pytest.approx(2 / 3) and result["pass@k"] == pytest.approx(2 / 3)
    assert [(p["id"], p["correct"], p["samples"], p["truncated"]) for p in result["problems"]] == [
        ("p1", 2, 2, 0), ("p2", 0, 2, 0), ("p3", 2, 2, 0)]
    assert result["problems"][1]["responses"] == ["\\boxed{7}", "\\boxed{7}"]
    assert result["settings"]["k"] == 2 and result["settings"]["domain"] == "math"
