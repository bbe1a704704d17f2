"""Code accuracy reward: extract the program, run it on the row's test cases in the sandbox.

Tests follow the APPS/TACO/LiveCodeBench convention:
- stdin tests `{"inputs": ["1 2\\n"], "outputs": ["3\\n"]}`: stdout must equal the expected output
  after stripping trailing whitespace per line and trailing blank lines;
- function-call tests `{"fn_name": "add", "inputs": [[1, 2]], "outputs": [3]}`: `add(*args)` (or
  `Solution().add(*args)`, LeetCode style) must return the expected value. LiveCodeBench's form, an
  input string of one JSON value per line and a JSON output string, is accepted too.
Expected outputs stay in this process; the sandbox only sees inputs.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from srpo_megatron.rewards.sandbox import RunOutcome, Sandbox, SandboxReport
from srpo_megatron.rewards.types import RewardResult

_REASON_CHARS = 200
_FLOAT_TOLERANCE = 1e-6

# Appended to the program in function-call mode; runs in the program's own globals.
_CALL_STUB = """

def __srpo_call(name, marker):
    import json, sys
    fn = globals().get(name)
    if not callable(fn) and "Solution" in globals():
        fn = getattr(globals()["Solution"](), name)
    result = fn(*json.loads(sys.stdin.read()))
    encode = lambda value: list(value) if isinstance(value, (set, frozenset)) else repr(value)
    sys.stdout.write("\\n" + marker + json.dumps(result, default=encode) + "\\n")

__srpo_call({name!r}, {marker!r})
"""


@dataclass(frozen=True)
class ProgramExtraction:
    """Which fenced block of a response is the program."""

    languages: tuple[str, ...] = ("python", "py", "python3")
    """Fence info strings (case-insensitive) that mark a Python block; the last such block wins."""
    any_language_fallback: bool = False
    """Without a Python block, take the last fenced block whatever its language (or none given)."""


def extract_program(response: str, extraction: ProgramExtraction = ProgramExtraction()) -> str | None:
    """The last closed fenced code block that `extraction` accepts, or None."""
    wanted = {language.lower() for language in extraction.languages}
    python_block = any_block = None
    language, lines = None, None
    for line in response.split("\n"):
        stripped = line.strip()
        if lines is None:
            if stripped.startswith("```"):
                info = stripped[3:].strip().split()
                language, lines = (info[0].lower() if info else ""), []
        elif stripped == "```":
            any_block = "\n".join(lines)
            if language in wanted:
                python_block = any_block
            lines = None
        else:
            lines.append(line)
    if python_block is not None:
        return python_block
    return any_block if extraction.any_language_fallback else None


@dataclass(frozen=True)
class TestSuite:
    """A row's test cases in one normalised form."""

    fn_name: str | None
    inputs: tuple[bytes, ...]
    expected: tuple[Any, ...]

    @classmethod
    def from_tests(cls, tests: Mapping | str) -> TestSuite:
        """Parse a `tests` dict (or its JSON string); a malformed one is a data error and raises."""
        if isinstance(tests, str):
            tests = json.loads(tests)
        if not isinstance(tests, Mapping) or "inputs" not in tests or "outputs" not in tests:
            raise ValueError(
                "code tests must be a dict with 'inputs' and 'outputs' lists (and 'fn_name' for "
                f"function-call tests); got {str(tests)[:200]!r}"
            )
        inputs, outputs = list(tests["inputs"]), list(tests["outputs"])
        if len(inputs) != len(outputs) or not inputs:
            raise ValueError(
                f"code tests need one output per input and at least one case (got {len(inputs)} inputs "
                f"and {len(outputs)} outputs)"
            )
        fn_name = tests.get("fn_name") or None
        if fn_name is None:
            return cls(None, tuple(_lines(x).encode() for x in inputs), tuple(_lines(y) for y in outputs))
        args = [_call_args(x) for x in inputs]
        return cls(
            str(fn_name), tuple(json.dumps(a).encode() for a in args), tuple(map(_json_value, outputs))
        )

    def source(self, program: str, marker: str) -> str:
        """The program to run: as written (stdin tests) or followed by the call stub."""
        if self.fn_name is None:
            return program
        return program + _CALL_STUB.format(name=self.fn_name, marker=marker)

    def check(self, index: int, outcome: RunOutcome, marker: str) -> str | None:
        """None when run `index` passed, else why it failed."""
        if outcome.status != "ok":
            return _failure(outcome)
        stdout = outcome.stdout.decode(errors="replace")
        if self.fn_name is None:
            return None if _normalise(stdout) == _normalise(self.expected[index]) else "wrong answer"
        at = stdout.rfind(marker)
        if at < 0:
            return "no return value"
        try:
            actual = json.loads(stdout[at + len(marker) :].split("\n", 1)[0])
        except ValueError:
            return "return value is not JSON"
        expected = self.expected[index]
        if _same_value(actual, expected) or _same_value([actual], expected):  # TACO wraps outputs
            return None
        return "wrong answer"


def _lines(value: Any) -> str:
    return "\n".join(map(str, value)) + "\n" if isinstance(value, list) else str(value)


def _call_args(value: Any) -> list:
    if isinstance(value, list):
        return value
    if isinstance(value, str):  # LiveCodeBench: one JSON value per line
        return [json.loads(line) for line in value.split("\n") if line.strip()]
    return [value]


def _json_value(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _normalise(text: str) -> list[str]:
    lines = [line.rstrip() for line in text.split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def _same_value(actual: Any, expected: Any) -> bool:
    if isinstance(actual, float) or isinstance(expected, float):
        return (
            isinstance(actual, (int, float))
            and isinstance(expected, (int, float))
            and math.isclose(actual, expected, rel_tol=_FLOAT_TOLERANCE, abs_tol=_FLOAT_TOLERANCE)
        )
    if isinstance(actual, list) and isinstance(expected, list):
        return len(actual) == len(expected) and all(map(_same_value, actual, expected))
    return actual == expected


def _failure(outcome: RunOutcome) -> str:
    if outcome.status == "timeout":
        return "timeout"
    if outcome.status == "output_limit":
        return "output limit exceeded"
    last_line = next((line for line in reversed(outcome.stderr.splitlines()) if line.strip()), "")
    if last_line:
        return f"runtime error: {last_line.strip()[:_REASON_CHARS]}"
    if outcome.exit_code < 0:
        return f"killed by signal {-outcome.exit_code}"
    return f"runtime error: exit code {outcome.exit_code}"


def code_reward(
    response: str,
    tests: Mapping | str,
    *,
    extraction: ProgramExtraction = ProgramExtraction(),
    sandbox: Sandbox | None = None,
    partial_credit: bool = False,
) -> RewardResult:
    """1.0 when the response's program passes every test (or the passed fraction with
    `partial_credit`). Without partial credit the run stops at the first failing test."""
    program = extract_program(response, extraction)
    suite = TestSuite.from_tests(tests)
    if program is None:
        return RewardResult(0.0, "no code block found")
    marker = f"@@srpo-result-{uuid.uuid4().hex}@@"
    failures: dict[int, str] = {}

    def stop(index: int, outcome: RunOutcome) -> bool:
        failure = suite.check(index, outcome, marker)
        if failure is not None:
            failures[index] = failure
        return failure is not None and not partial_credit

    report = (sandbox or Sandbox()).run(suite.source(program, marker), suite.inputs, stop)
    return _score(report, failures, len(suite.inputs), partial_credit)


def _score(
    report: SandboxReport, failures: dict[int, str], n_tests: int, partial_credit: bool
) -> RewardResult:
    if report.status == "compile_error":
        last_line = (report.detail.splitlines() or ["?"])[-1]
        return RewardResult(0.0, f"compile error: {last_line[:_REASON_CHARS]}")
    if report.status == "timeout":
        failures.setdefault(len(report.runs), "timeout")
    elif report.status == "crashed":
        failures.setdefault(len(report.runs), f"sandbox crashed: {report.detail[:_REASON_CHARS]}")
    passed = len(report.runs) - len([i for i in failures if i < len(report.runs)])
    if passed == n_tests:
        return RewardResult(1.0, f"passed {n_tests}/{n_tests} tests")
    first = min(failures)
    reason = f"test {first + 1}/{n_tests}: {failures[first]}"
    return RewardResult(passed / n_tests if partial_credit else 0.0, reason)


def code_reward_batch(
    responses: Sequence[str],
    tests: Sequence[Mapping | str],
    *,
    extraction: ProgramExtraction = ProgramExtraction(),
    sandbox: Sandbox | None = None,
    partial_credit: bool = False,
    workers: int = 2,
) -> list[RewardResult]:
    """`code_reward` over a batch: up to `workers` sandboxed programs run at once; input order kept."""
    if len(responses) != len(tests):
        raise ValueError(f"got {len(responses)} responses but {len(tests)} test sets; pass one per response")
    if workers < 1:
        raise ValueError(f"code_reward_batch workers must be >= 1 (got {workers})")
    sandbox = sandbox or Sandbox()

    def score(response: str, row_tests: Mapping | str) -> RewardResult:
        return code_reward(
            response, row_tests, extraction=extraction, sandbox=sandbox, partial_credit=partial_credit
        )

    # Threads suffice: each one waits on its sandbox process, which does the work.
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="srpo-code-reward") as pool:
        return list(pool.map(score, responses, tests))
