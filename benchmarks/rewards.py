"""Reward throughput on this machine: math responses graded per second, code programs run per second.

Prints one JSON object. Workloads look like an RL step: G rollouts per problem sharing a reference,
about a third of them wrong, ~2 KB of reasoning before the answer; programs with 5 stdin tests, a
third of them failing the first test (and stopping there). Medians over `--repeats` runs of a warm
pool/sandbox; worker start-up is reported separately.

    python benchmarks/rewards.py [--workers 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from srpo_megatron.rewards.code import code_reward_batch  # noqa: E402
from srpo_megatron.rewards.math import GradingPool  # noqa: E402
from srpo_megatron.rewards.sandbox import Sandbox, SandboxConfig  # noqa: E402

REASONING = "Let us think step by step. " * 80  # ~2 KB, like a short chain of thought
# (reference, equivalent forms a model might write, a wrong answer)
MATH_PROBLEMS = [
    ("\\frac{1}{2}", ["0.5", "\\dfrac{1}{2}"], "\\frac{1}{3}"),
    ("42", ["42", "42.0"], "41"),
    ("(0, 1]", ["(0,1]", "(0, 1]"], "[0, 1]"),
    ("\\{1, 2, 3\\}", ["\\{3, 2, 1\\}", "\\{1,2,3\\}"], "\\{1, 2\\}"),
    ("2\\sqrt{3}", ["\\sqrt{12}", "2 \\sqrt 3"], "3\\sqrt{2}"),
    ("25\\%", ["0.25", "25\\%"], "0.52"),
    ("x^2 + 2x + 1", ["(x+1)^2", "x^2+2x+1"], "(x-1)^2"),
    ("\\pi/4", ["\\frac{\\pi}{4}", "\\frac{\\pi}{4}"], "\\pi/2"),
]
CODE_TESTS = {"inputs": [f"{i} {i * 3}\n" for i in range(5)], "outputs": [f"{i * 4}\n" for i in range(5)]}
CODE_PROGRAMS = [
    "a, b = map(int, input().split())\nprint(a + b)",
    "import sys\nprint(sum(map(int, sys.stdin.read().split())))",
    "a, b = map(int, input().split())\nprint(a * b)",  # wrong: stops at the first failing test
]


def math_workload(rollouts: int) -> tuple[list[str], list[str]]:
    responses, answers = [], []
    for reference, right, wrong in MATH_PROBLEMS:
        for g in range(rollouts):
            predicted = wrong if g % 3 == 2 else right[g % 2]
            responses.append(f"{REASONING}\nSo the answer is \\boxed{{{predicted}}}.")
            answers.append(reference)
    return responses, answers


def bench_math(workers: int, repeats: int) -> dict:
    responses, answers = math_workload(rollouts=32)
    start = time.monotonic()
    with GradingPool(workers=workers, timeout_s=10.0) as pool:
        pool.wait_ready()
        startup_s = time.monotonic() - start
        rates = []
        for _ in range(repeats):
            start = time.monotonic()
            results = pool.grade(responses, answers)
            rates.append(len(responses) / (time.monotonic() - start))
    accuracy = sum(r.score for r in results) / len(results)
    return {
        "math_per_s": round(statistics.median(rates), 1),
        "math_batch": len(responses),
        "math_accuracy": round(accuracy, 3),
        "math_pool_startup_s": round(startup_s, 2),
    }


def bench_code(workers: int, repeats: int) -> dict:
    sandbox = Sandbox(SandboxConfig(timeout_s=2.0))
    # Distinct sources: code_reward_batch runs identical programs once, which would time the cache.
    responses = [f"```python\n# program {i}\n{CODE_PROGRAMS[i % 3]}\n```" for i in range(48)]
    rates = []
    for _ in range(repeats):
        start = time.monotonic()
        results = code_reward_batch(
            responses, [CODE_TESTS] * len(responses), sandbox=sandbox, workers=workers
        )
        rates.append(len(responses) / (time.monotonic() - start))
    return {
        "code_programs_per_s": round(statistics.median(rates), 1),
        "code_batch": len(responses),
        "code_tests_per_program": len(CODE_TESTS["inputs"]),
        "code_pass_rate": round(sum(r.score for r in results) / len(results), 3),
        "sandbox_layers": sorted(sandbox.layers),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2, help="grading workers / parallel sandboxes")
    parser.add_argument("--repeats", type=int, default=3, help="timed repetitions; the median is reported")
    args = parser.parse_args()
    result = {"workers": args.workers, "cpus": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2)}
    result |= bench_math(args.workers, args.repeats)
    result |= bench_code(args.workers, args.repeats)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
