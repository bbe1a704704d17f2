"""Format term, language-mixing penalty, RewardConfig validation and the per-domain batch scorer."""

from __future__ import annotations

import time

import pytest

from srpo_megatron.rewards.combine import REWARD_DOMAINS, RewardConfig, RewardScorer, ScoredResponse
from srpo_megatron.rewards.format import (
    FormatConfig,
    format_reward,
    language_mixing_penalty,
    language_mixing_ratio,
)
from srpo_megatron.rewards.sandbox import SandboxConfig
from srpo_megatron.rewards.types import RewardResult

# --- format term -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("response", "reason"),
    [
        ("<think>add them</think> The answer is \\boxed{3}.", "format ok"),
        ("\n  <think>\nstep\n</think>\n\n42", "format ok"),
        ("The answer is 3.", "does not start with <think>"),
        ("<think>step one, then step two", "expected one </think>, found 0"),
        ("<think>a</think>b</think>c", "expected one </think>, found 2"),
        ("<think>a<think>b</think>c", "<think> appears more than once"),
        ("<think>   </think>3", "empty reasoning"),
        ("<think>reasoning</think>  \n", "no answer after </think>"),
    ],
)
def test_format_reward(response: str, reason: str) -> None:
    assert format_reward(response) == RewardResult(1.0 if reason == "format ok" else 0.0, reason)


def test_format_options() -> None:
    in_prompt = FormatConfig(open_tag_in_prompt=True)
    assert format_reward("reasoning</think>answer", in_prompt).score == 1.0
    assert format_reward("<think>reasoning</think>answer", in_prompt).score == 0.0
    tags = FormatConfig(think_open="<reasoning>", think_close="</reasoning>")
    assert format_reward("<reasoning>r</reasoning>a", tags).score == 1.0
    pattern = FormatConfig(pattern=r"<think>.+</think>\s*<answer>.+</answer>")
    assert format_reward("<think>r</think><answer>3</answer>", pattern).score == 1.0
    assert format_reward("<think>r</think>3", pattern) == RewardResult(
        0.0, "does not match the format pattern"
    )
    with pytest.raises(ValueError, match="non-empty"):
        FormatConfig(think_open="")


# --- language mixing -------------------------------------------------------------------------------


def test_language_mixing_ratio() -> None:
    assert language_mixing_ratio("We add the two numbers and get three.") == 0.0
    assert language_mixing_ratio("我们把两个数相加，得到三。") == 0.0
    assert language_mixing_ratio("") == 0.0
    assert language_mixing_ratio("我们 need to 相加 these 数字") == pytest.approx(
        3 / 9
    )  # 6 CJK chars, 3 words
    # Math and code are not prose: a Chinese solution with LaTeX and Python is not mixed.
    chinese_with_math = (
        "设 $f(x) = \\frac{x}{\\sqrt{x+1}}$，则 \\(f(3) = \\frac{3}{2}\\)。代码：```python\nprint(sum)\n```"
    )
    assert language_mixing_ratio(chinese_with_math) == 0.0


def test_language_mixing_penalty() -> None:
    assert language_mixing_penalty("这是中文 with some English words mixed in", 0.1).score == 1.0
    assert language_mixing_penalty("This is English with one 词", 0.2).score == 0.0
    penalised = language_mixing_penalty("一二三 one two three", 0.1)
    assert penalised == RewardResult(1.0, "language mixing 0.50 > 0.10")


def test_language_mixing_is_linear_on_degenerate_text() -> None:
    start = time.monotonic()
    language_mixing_ratio("\\(" * 200_000 + "$" + "```" * 50_001)
    assert time.monotonic() - start < 2.0


# --- config ----------------------------------------------------------------------------------------


def test_reward_config_validation() -> None:
    with pytest.raises(ValueError, match=r"RewardConfig.format_weight must be >= 0 \(got -1"):
        RewardConfig(format_weight=-1)
    with pytest.raises(ValueError, match="language_mixing_threshold must be in \\[0, 0.5\\]"):
        RewardConfig(language_mixing_threshold=0.7)
    with pytest.raises(ValueError, match="math_timeout_s must be > 0"):
        RewardConfig(math_timeout_s=0)
    with pytest.raises(ValueError, match="code_workers must be >= 1"):
        RewardConfig(code_workers=0)


# --- scorer ----------------------------------------------------------------------------------------

ADD = {"inputs": ["1 2\n"], "outputs": ["3\n"]}


@pytest.fixture(scope="module")
def scorer():
    config = RewardConfig(
        format_weight=0.5,
        language_penalty_weight=0.25,
        math_timeout_s=2.0,
        math_workers=1,
        sandbox=SandboxConfig(timeout_s=2.0, memory_mb=512),
    )
    with RewardScorer(config) as scorer:
        scorer.math_pool.wait_ready()  # start the grading worker outside the timed tests
        yield scorer


def test_scorer_dispatches_per_domain_in_input_order(scorer: RewardScorer) -> None:
    rows = [
        {"id": "m1", "domain": "math", "answer": "\\frac{1}{2}"},
        {"id": "c1", "domain": "code", "tests": ADD},
        {"id": "m2", "domain": "math", "answer": "7"},
        {"id": "c2", "domain": "code", "tests": ADD},
    ]
    responses = [
        "<think>half</think> \\boxed{0.5}",
        "<think>sum</think>\n```python\na, b = map(int, input().split())\nprint(a + b)\n```",
        "Answer: 8",
        "<think>我们 need to 相加 these 数字</think>\n```python\nprint(4)\n```",
    ]
    scored = scorer.score(rows, responses)
    assert scored == [
        ScoredResponse(1.5, 1.0, 1.0, 0.0, "correct"),
        ScoredResponse(1.5, 1.0, 1.0, 0.0, "passed 1/1 tests"),
        ScoredResponse(0.0, 0.0, 0.0, 0.0, "wrong answer"),
        ScoredResponse(0.25, 0.0, 1.0, 1.0, "test 1/1: wrong answer"),
    ]


def test_domains_are_scored_concurrently(scorer: RewardScorer) -> None:
    rows = [{"domain": "math", "answer": "1"}, {"domain": "code", "tests": ADD}]
    responses = ["\\boxed{5^{5^{5^5}}}", "```python\nimport time\ntime.sleep(1.5)\nprint(3)\n```"]
    start = time.monotonic()
    scored = scorer.score(rows, responses)
    elapsed = time.monotonic() - start
    assert [s.reason for s in scored] == ["timeout", "passed 1/1 tests"]
    assert elapsed < 3.2  # 2 s math timeout + 1.5 s program would be 3.5 s one after the other


def test_unknown_domain_and_missing_fields(scorer: RewardScorer) -> None:
    with pytest.raises(
        ValueError, match=r"row 'x1' has unknown domain 'chess'; valid domains: \['code', 'math'\]"
    ):
        scorer.score([{"id": "x1", "domain": "chess"}], ["e4"])
    with pytest.raises(ValueError, match="math rows need the 'answer' field; missing in rows \\['m9'\\]"):
        scorer.score([{"id": "m9", "domain": "math"}], ["\\boxed{1}"])
    with pytest.raises(ValueError, match="one row per response"):
        scorer.score([{"domain": "math", "answer": "1"}], [])
    assert REWARD_DOMAINS.names() == ["code", "math"]
