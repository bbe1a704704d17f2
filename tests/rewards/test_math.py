"""Math reward: answer extraction, math-verify equivalences, the hard timeout, and never raising."""

from __future__ import annotations

import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from srpo_megatron.rewards.math import (
    AnswerExtraction,
    GradingPool,
    extract_answer,
    math_reward,
    math_reward_batch,
)
from srpo_megatron.rewards.types import RewardResult

REPO_ROOT = Path(__file__).resolve().parents[2]
HANGS = "The tower is \\boxed{5^{5^{5^5}}}."  # big-integer power: math-verify cannot interrupt it


# --- extraction ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ("first \\boxed{1} then \\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("nested \\boxed{\\frac{\\sqrt{2}}{2}} end", "\\frac{\\sqrt{2}}{2}"),
        ("set \\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),  # escaped set braces do not close the box
        ("space \\boxed {7}", "7"),
        ("\\fbox{8}", "8"),
        ("reasoning...\nAnswer: $\\frac{3}{4}$.", "\\frac{3}{4}"),
        ("**Final Answer:** 12\n", "12"),
        ("Answer: 1\nmore text\nAnswer: 2", "2"),
        ("truncated \\boxed{12\nAnswer: 5", "5"),  # an unclosed box falls back to the answer line
        ("no answer here, just 42", None),
        ("Answer:   ", None),
    ],
)
def test_extract_answer(response: str, expected: str | None) -> None:
    assert extract_answer(response) == expected


def test_extraction_is_configurable() -> None:
    response = "\\boxed{1}\nAnswer: 2\nResult => 3"
    assert extract_answer(response, AnswerExtraction(boxed=False)) == "2"
    assert extract_answer(response, AnswerExtraction(boxed=True, answer_line=False)) == "1"
    custom = AnswerExtraction(boxed=False, answer_line_pattern=r"(?m)^Result => (.*)$")
    assert extract_answer(response, custom) == "3"
    assert extract_answer("\\boxed{1}", AnswerExtraction(boxed=False, answer_line=False)) is None


# --- equivalence through math-verify ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("predicted", "reference"),
    [
        ("\\frac{1}{2}", "0.5"),  # fraction vs decimal
        ("\\dfrac12", "1/2"),
        ("0.50", "\\frac{1}{2}"),  # trailing zeros
        ("0.75", "3/4"),
        ("50\\%", "0.5"),  # percentages
        ("50\\%", "50"),
        ("(0, 1]", "(0,1]"),  # intervals
        ("\\{3, 2, 1\\}", "\\{1,2,3\\}"),  # sets are unordered
        ("5 \\text{ cm}", "5"),  # units stripped
        ("10^\\circ", "10"),
        ("\\$5", "5"),
        ("x = 3", "3"),
        ("\\frac{\\sqrt{2}}{2}", "\\sqrt{2}/2"),
        ("1{,}000", "1000"),
    ],
)
def test_equivalent_answers_score_one(grading_pool: GradingPool, predicted: str, reference: str) -> None:
    result = grading_pool.grade([f"so \\boxed{{{predicted}}}"], [reference])[0]
    assert result == RewardResult(1.0, "correct")


@pytest.mark.parametrize(
    ("predicted", "reference"),
    [
        ("(0, 1]", "[0,1]"),  # interval ends matter
        ("\\{1, 3\\}", "\\{1,2\\}"),
        ("\\frac{1}{3}", "0.5"),
        ("2", "3"),
    ],
)
def test_different_answers_score_zero(grading_pool: GradingPool, predicted: str, reference: str) -> None:
    result = grading_pool.grade([f"\\boxed{{{predicted}}}"], [reference])[0]
    assert result == RewardResult(0.0, "wrong answer")


def test_missing_answer_has_its_own_reason(grading_pool: GradingPool) -> None:
    assert grading_pool.grade(["I give up."], ["3"])[0] == RewardResult(0.0, "no final answer found")


def test_answer_line_is_graded(grading_pool: GradingPool) -> None:
    assert grading_pool.grade(["work...\nAnswer: $0.25$"], ["\\frac14"])[0].score == 1.0


# --- hard timeout, isolation of failures, parallelism ----------------------------------------------


def test_hanging_grade_times_out_and_pool_recovers(grading_pool: GradingPool) -> None:
    start = time.monotonic()
    result = grading_pool.grade([HANGS], ["5"], timeout_s=1.0)[0]
    assert result == RewardResult(0.0, "timeout")
    assert time.monotonic() - start < 5.0
    # The stuck worker was replaced: the pool still grades, and not with stale results.
    assert grading_pool.grade(["\\boxed{4}", "\\boxed{2}"], ["4", "3"]) == [
        RewardResult(1.0, "correct"),
        RewardResult(0.0, "wrong answer"),
    ]


def test_batch_keeps_input_order_around_timeouts(grading_pool: GradingPool) -> None:
    responses = ["\\boxed{1}", HANGS, "\\boxed{3}", "nothing", "\\boxed{5}"]
    answers = ["1", "5", "3", "4", "6"]
    results = math_reward_batch(responses, answers, pool=grading_pool, timeout_s=1.0)
    assert [(r.score, r.reason) for r in results] == [
        (1.0, "correct"),
        (0.0, "timeout"),
        (1.0, "correct"),
        (0.0, "no final answer found"),
        (0.0, "wrong answer"),
    ]


def test_batch_runs_in_parallel(grading_pool: GradingPool) -> None:
    """Two hanging responses on two workers take one timeout, not two."""
    grading_pool.wait_ready()  # workers replaced by earlier timeouts may still be importing sympy
    start = time.monotonic()
    results = grading_pool.grade([HANGS, HANGS], ["1", "2"], timeout_s=1.5)
    elapsed = time.monotonic() - start
    assert [r.reason for r in results] == ["timeout", "timeout"]
    assert elapsed < 2.9


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has finished dying
    except FileNotFoundError:
        return False


def test_stuck_worker_dies_by_itself_when_the_parent_is_killed() -> None:
    """The per-task CPU limit ends a hung grade even when no parent is left to enforce the deadline."""
    script = (
        f"import sys; sys.path.insert(0, {str(REPO_ROOT)!r})\n"
        "from srpo_megatron.rewards.math import GradingPool\n"
        "pool = GradingPool(workers=1)\npool.wait_ready()\n"
        "print(pool._workers[0].process.pid, flush=True)\n"
        f"pool.grade([{HANGS!r}], ['1'], timeout_s=1.0)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    worker_pid = int(parent.stdout.readline())
    time.sleep(0.3)  # the worker now holds the hanging task
    parent.kill()
    parent.wait()
    parent.stdout.close()
    time.sleep(0.5)
    assert _alive(worker_pid)  # stuck in C: it cannot notice that its parent is gone
    deadline = time.monotonic() + 30.0
    while _alive(worker_pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive(worker_pid)


def test_dead_worker_is_replaced(grading_pool: GradingPool) -> None:
    for worker in grading_pool._workers:  # simulate an OOM kill of idle (or starting) workers
        worker.process.kill()
        worker.process.wait()
    assert grading_pool.grade(["\\boxed{7}"] * 3, ["7"] * 3) == [RewardResult(1.0, "correct")] * 3


# --- never raises --------------------------------------------------------------------------------

NASTY = [
    "",
    "\\boxed{",
    "\\boxed{}",
    "\\boxed{{{{{{{{{{",
    "}}}}}}\\boxed{}}}}}",
    "\\boxed{\\}",
    "\\boxed{\\frac{1}{0}}",
    "\\boxed{0/0}",
    "\\boxed{\\infty - \\infty}",
    "\\boxed{\\sqrt{-1}}",
    "\\boxed{\\begin{pmatrix}1&2\\end{pmatrix}}",
    "\\boxed{x^{x^{x^{x}}}}",
    "\\boxed{10^{10^{10}}}",
    "\\boxed{5^(5^(5^5))}",
    "\\boxed{" + "(" * 500 + "}",
    "\\boxed{" + "\\frac{1}{" * 200 + "}" * 200 + "}",
    "Answer: " + "9" * 5000,
    "Answer: \x00\x01\x02",
    "Answer: \ud800 lone surrogate",
    "\\boxed{🙂}",
    "$" * 1000,
    "\\" * 1000,
    "Answer:" * 1000,
    "\\boxed{a}" * 2000,
    "\\boxed{\\text{" + "x" * 10000 + "}}",
]


def test_nasty_strings_never_raise(grading_pool: GradingPool) -> None:
    results = grading_pool.grade(NASTY, ["1"] * len(NASTY), timeout_s=1.0)
    assert len(results) == len(NASTY)
    assert all(isinstance(r, RewardResult) and 0.0 <= r.score <= 1.0 for r in results)
    # Nasty references too: a broken dataset row must not crash the grader either.
    results = grading_pool.grade(["\\boxed{1}"] * len(NASTY), NASTY, timeout_s=1.0)
    assert all(isinstance(r, RewardResult) for r in results)


def test_random_latex_fuzz_never_raises(grading_pool: GradingPool) -> None:
    rng = random.Random(0)
    tokens = [
        "\\boxed{",
        "{",
        "}",
        "\\frac",
        "\\sqrt",
        "^",
        "_",
        "1",
        "x",
        "=",
        "\\{",
        "\\}",
        "(",
        ")",
        "[",
        "]",
        ",",
        "\\%",
        "\\text{",
        "Answer:",
        "\n",
        "$",
        "\\",
        "-",
        "/",
        ".",
        "\\pi",
        "\\infty",
    ]
    responses = ["".join(rng.choice(tokens) for _ in range(rng.randint(1, 40))) for _ in range(150)]
    results = grading_pool.grade(responses, ["1"] * len(responses), timeout_s=2.0)
    assert all(isinstance(r, RewardResult) and r.reason for r in results)


# --- API -----------------------------------------------------------------------------------------


def test_math_reward_default_pool() -> None:
    assert math_reward("\\boxed{\\frac{2}{4}}", "0.5") == RewardResult(1.0, "correct")


def test_pool_validation_and_close() -> None:
    with pytest.raises(ValueError, match="workers must be >= 1"):
        GradingPool(workers=0)
    with pytest.raises(ValueError, match="timeout_s must be > 0"):
        GradingPool(timeout_s=0)
    pool = GradingPool(workers=1)
    pool.close()
    with pytest.raises(RuntimeError, match="closed"):
        pool.grade(["\\boxed{1}"], ["1"])
    with pytest.raises(ValueError, match="one answer per response"):
        math_reward_batch(["a", "b"], ["1"], pool=pool)
