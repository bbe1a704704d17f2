"""Test programs, the third kind of code test: HumanEval `check(candidate)`, MBPP assert lines with set-up
code, pytest-style functions. A failing assert fails a test with a reason; the grader never crashes."""

from __future__ import annotations

import json

import pytest

from srpo_megatron.rewards.code import TestProgram, TestSuite, code_reward, code_reward_batch, parse_tests
from srpo_megatron.rewards.sandbox import Sandbox
from srpo_megatron.rewards.types import RewardResult

HUMANEVAL = {
    "test_code": ["\n\nMETADATA = {'author': 'jt'}\n\n\ndef check(candidate):\n"
                  "    assert candidate([1, 2, 3]) == 6\n    assert candidate([]) == 0\n"],
    "entry_point": "total",
}
MBPP = {
    "setup_code": "import math\nSCALE = 10",
    "test_code": ["assert scaled(1) == SCALE", "assert scaled(2) == 2 * SCALE", "assert math.isclose(scaled(0.5), 5)"],
}
PYTEST = {
    "test_code": ["from solution import total\n\n\ndef test_empty():\n    assert total([]) == 0\n\n\n"
                  "def test_many():\n    assert total([4, 5]) == 9\n"],
}


def fenced(program: str) -> str:
    return f"```python\n{program}\n```"


TOTAL = fenced("def total(xs):\n    return sum(xs)")


@pytest.mark.parametrize("tests", [HUMANEVAL, PYTEST, json.dumps(HUMANEVAL)])
def test_correct_program_passes(sandbox: Sandbox, tests) -> None:
    assert code_reward(TOTAL, tests, sandbox=sandbox) == RewardResult(1.0, "passed 1/1 tests")


@pytest.mark.parametrize(
    ("program", "tests", "reason"),
    [
        ("def total(xs):\n    return len(xs)", HUMANEVAL, "AssertionError at `assert candidate([1, 2, 3]) == 6`"),
        ("def add(xs):\n    return sum(xs)", HUMANEVAL, "NameError: the program does not define total()"),
        ("def total(xs):\n    return 1 // 0", HUMANEVAL,
         "ZeroDivisionError: integer division or modulo by zero at `assert candidate([1, 2, 3]) == 6`"),
        ("def total(xs):\n    return sum(xs) if xs else 1", PYTEST, "AssertionError at `assert total([]) == 0`"),
        ("import sys\nsys.exit(0)", HUMANEVAL, "the program ended before this test ran"),
        ("import os\nos._exit(0)", HUMANEVAL, "the program ended before this test ran"),
        ("raise ValueError('bad program')", HUMANEVAL, "runtime error: ValueError: bad program"),
        ("def total(xs):\n    while True:\n        pass", HUMANEVAL, "timeout"),
        ("def total(xs):\n    raise SystemExit(0)", HUMANEVAL, "SystemExit: 0 at `assert candidate([1, 2, 3]) == 6`"),
    ],
)
def test_failing_program_fails_the_test_with_reason(sandbox: Sandbox, program: str, tests: dict, reason: str) -> None:
    assert code_reward(fenced(program), tests, sandbox=sandbox) == RewardResult(0.0, f"test 1/1: {reason}")


def test_mbpp_asserts_are_tests_with_setup_and_partial_credit(sandbox: Sandbox) -> None:
    assert code_reward(fenced("def scaled(x):\n    return x * 10"), MBPP, sandbox=sandbox).score == 1.0
    half = fenced("def scaled(x):\n    return int(x) * 10")  # wrong only on the fractional test
    assert code_reward(half, MBPP, sandbox=sandbox, partial_credit=True) == RewardResult(
        2 / 3, "test 3/3: AssertionError at `assert math.isclose(scaled(0.5), 5)`"
    )
    assert code_reward(half, MBPP, sandbox=sandbox).score == 0.0
    # MBPP's reference programs use \r\n line ends.
    assert code_reward(fenced("def scaled(x):\r\n    return x * 10\r\n"), MBPP, sandbox=sandbox).score == 1.0


def test_each_test_runs_in_its_own_namespace(sandbox: Sandbox) -> None:
    tests = {"test_code": ["check = 1\nassert total([1]) == 1", "assert check(0) == 'mine'"]}
    program = fenced("def check(x):\n    return 'mine'\n\ndef total(xs):\n    return sum(xs)")
    assert code_reward(program, tests, sandbox=sandbox).score == 1.0


def test_broken_setup_fails_every_test(sandbox: Sandbox) -> None:
    tests = {"setup_code": "import no_such_module", "test_code": ["assert True", "assert True"]}
    result = code_reward(TOTAL, tests, sandbox=sandbox, partial_credit=True)
    assert result == RewardResult(
        0.0, "test 1/2: ModuleNotFoundError: No module named 'no_such_module' at `import no_such_module`")


def test_test_code_is_not_readable_by_io(sandbox: Sandbox) -> None:
    """The tests are inside the program's source only: not on stdin, in argv, the environment or files."""
    probe = fenced(
        "import os, sys\n"
        "def seen():\n"
        "    text = sys.stdin.read() + ' '.join(sys.argv) + repr(dict(os.environ))\n"
        "    for top in ('.', '/tmp'):\n"
        "        for root, _, files in os.walk(top):\n"
        "            for name in files:\n"
        "                try:\n"
        "                    text += open(os.path.join(root, name), errors='replace').read()\n"
        "                except OSError:\n"
        "                    pass\n"
        "    return ('CANARY' + '-4711') in text\n"
        "LEAKED = seen()\n"
    )
    tests = {"test_code": ["assert not LEAKED  # CANARY-4711"]}
    assert code_reward(probe, tests, sandbox=sandbox) == RewardResult(1.0, "passed 1/1 tests")


def test_long_failure_reason_is_cut(sandbox: Sandbox) -> None:
    tests = {"test_code": ["assert total([1]) == 2, 'x' * 5000"]}
    result = code_reward(TOTAL, tests, sandbox=sandbox)
    assert result.score == 0.0 and result.reason.startswith("test 1/1: AssertionError: xxx")
    assert len(result.reason) <= len("test 1/1: ") + 200


def test_batch_mixes_test_kinds(sandbox: Sandbox) -> None:
    stdin = {"inputs": ["1 2\n"], "outputs": ["3\n"]}
    responses = [TOTAL, fenced("a, b = map(int, input().split())\nprint(a + b)"), fenced("def total(xs):\n    return 0")]
    results = code_reward_batch(responses, [HUMANEVAL, stdin, HUMANEVAL], sandbox=sandbox, workers=2)
    assert [r.score for r in results] == [1.0, 1.0, 0.0]


def test_parse_tests_kinds_and_errors() -> None:
    assert isinstance(parse_tests({"inputs": ["1"], "outputs": ["1"]}), TestSuite)
    program = parse_tests(json.dumps({"test_code": "assert f(1) == 1", "entry_point": "f"}))
    assert program == TestProgram(("assert f(1) == 1",), "", "f") and program.n_tests == 1
    for tests, message in [
        ({"test_code": []}, "'test_code' must be Python code or a non-empty list"),
        ({"test_code": ["assert f(1) == 1", "  "]}, "'test_code' must be Python code"),
        ({"test_code": ["assert f(1) =="]}, r"'test_code\[0\]' is not valid Python"),
        ({"test_code": ["x = 1"], "setup_code": "def ("}, "'setup_code' is not valid Python"),
        ({"test_code": ["def check(candidate):\n    assert candidate(1)"]}, "defines check.*no 'entry_point'"),
        ({"test_code": ["assert f(1)"], "entry_point": "not a name"}, "'entry_point' must be a Python name"),
        ({"test_code": ["assert f(1)"], "setup_code": 5}, "'setup_code' must be Python code"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_tests(tests)


@pytest.mark.parametrize(("test_code", "reason"), [
    ("import unittest\nfrom solution import total\n\n\nclass TotalTest(unittest.TestCase):\n"
     "    def test_many(self):\n        self.assertEqual(total([4, 5]), 9)\n",
     "AssertionError: test_many: AssertionError: 0 != 9"),
    ("class TestTotal:\n    def test_many(self):\n        assert total([4, 5]) == 9\n",
     "AssertionError at `assert total([4, 5]) == 9`"),
])
def test_unittest_and_pytest_classes_run(sandbox: Sandbox, test_code: str, reason: str) -> None:
    tests = {"test_code": [test_code]}
    assert code_reward(TOTAL, tests, sandbox=sandbox).score == 1.0
    wrong = code_reward(fenced("def total(xs):\n    return 0"), tests, sandbox=sandbox)
    assert wrong == RewardResult(0.0, f"test 1/1: {reason}")


def test_test_that_cannot_fail_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"'test_code\[0\]' has no assert, raise or assert\*\(\) call"):
        parse_tests({"test_code": ["print(total([1]))"]})
    assert parse_tests({"test_code": ["case.assertEqual(total([1]), 1)"]}).n_tests == 1


class CountingSandbox(Sandbox):
    """Records the programs it runs."""

    def __init__(self, config) -> None:
        super().__init__(config)
        self.sources: list[str] = []

    def run(self, source, inputs, stop=None):
        self.sources.append(source)  # list.append is atomic: safe from the batch's threads
        return super().run(source, inputs, stop)


def test_batch_runs_each_distinct_program_once(sandbox: Sandbox) -> None:
    counting = CountingSandbox(sandbox.config)
    wrong = fenced("def total(xs):\n    return 0")
    responses = [TOTAL, wrong, f"Same program, other words.\n{TOTAL}", TOTAL, "no code", wrong, TOTAL]
    tests = [HUMANEVAL] * 6 + [json.dumps(PYTEST)]  # the last one: the same program against other tests
    results = code_reward_batch(responses, tests, sandbox=counting, workers=2)
    assert [r.score for r in results] == [1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0]
    assert results[4].reason == "no code block found" and results[1] == results[5]
    assert len(counting.sources) == 3  # TOTAL x HUMANEVAL, wrong x HUMANEVAL, TOTAL x PYTEST


def test_setup_names_are_visible_to_the_program(sandbox: Sandbox) -> None:
    """MBPP's reference programs use what `test_setup_code` imports (its harness runs one namespace)."""
    tests = {"setup_code": "import math", "test_code": ["assert hyp(3, 4) == 5.0"]}
    program = fenced("def hyp(a, b):\n    return math.sqrt(a * a + b * b)")
    assert code_reward(program, tests, sandbox=sandbox).score == 1.0


PYTEST_FEATURES = '''import pytest
from solution import div, show


def test_raises():
    with pytest.raises(ValueError, match="zero") as info:
        div(1, 0)
    assert "must" in str(info.value)


@pytest.mark.parametrize("a, b, expected", [(1, 2, 0.5), (3, 3, 1.0)])
def test_div(a, b, expected):
    assert div(a, b) == pytest.approx(expected)


@pytest.fixture
def numbers():
    yield [1, 2]


def test_fixture(numbers):
    assert div(*numbers) == 0.5


def test_print(capsys):
    show(3)
    assert capsys.readouterr().out == "value 3\\n"


@pytest.mark.slow
def test_marked():
    assert div(4, 2) == 2
'''
DIV = "def div(a, b):\n    if b == 0:\n        raise ValueError('b must not be zero')\n    return a / b\n\n" \
      "def show(x):\n    print('value', x)"


@pytest.mark.parametrize(("program", "reason"), [
    (DIV, None),
    (DIV.replace("a / b", "a // b"), "AssertionError at `assert div(a, b) == pytest.approx(expected)`"),
    (DIV.replace("ValueError", "TypeError"), "TypeError: b must not be zero at `div(1, 0)`"),
    (DIV.replace("zero", "0"), "AssertionError: Regex 'zero' does not match 'b must not be 0' at "
                                   '`with pytest.raises(ValueError, match="zero") as info:`'),
    (DIV.replace("'value', x", "x"), 'AssertionError at `assert capsys.readouterr().out == "value 3\\n"`'),
])
def test_pytest_tests_run_without_pytest_in_the_sandbox(sandbox: Sandbox, program: str, reason) -> None:
    """KodCode-style tests import pytest; the sandbox's interpreter has only the standard library."""
    result = code_reward(fenced(program), {"test_code": [PYTEST_FEATURES]}, sandbox=sandbox)
    expected = (1.0, "passed 1/1 tests") if reason is None else (0.0, f"test 1/1: {reason}")
    assert (result.score, result.reason) == expected


def test_unavailable_fixture_fails_the_test_naming_it(sandbox: Sandbox) -> None:
    tests = {"test_code": ["def test_files(tmp_path):\n    assert total([]) == 0"]}
    result = code_reward(TOTAL, tests, sandbox=sandbox)
    assert result.score == 0.0
    assert result.reason == "test 1/1: TypeError: fixture 'tmp_path' is not available in the sandbox"
