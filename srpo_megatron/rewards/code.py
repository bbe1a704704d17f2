"""Code accuracy reward: extract the program, run it on the row's test cases in the sandbox.

Three kinds of tests (`parse_tests` tells them apart):
- stdin tests `{"inputs": ["1 2\\n"], "outputs": ["3\\n"]}` (APPS/TACO/LiveCodeBench): stdout must
  equal the expected output after stripping trailing whitespace per line and trailing blank lines;
- function-call tests `{"fn_name": "add", "inputs": [[1, 2]], "outputs": [3]}`: `add(*args)` (or
  `Solution().add(*args)`, LeetCode style) must return the expected value. LiveCodeBench's form, an
  input string of one JSON value per line and a JSON output string, is accepted too. For these two
  kinds expected outputs stay in this process; the sandbox only sees inputs;
- test programs `{"test_code": ["assert add(1, 2) == 3", ...], "setup_code"?: str, "entry_point"?: str}`
  (HumanEval, MBPP, pytest-style sets): Python test code run after the candidate in the same
  program, see `TestProgram`.
"""

from __future__ import annotations

import ast
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
_NO_PROGRAM = RewardResult(0.0, "no code block found")
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


# Appended to the program in test-program mode (after a blank line); runs in the program's own globals.
# Verdicts go straight to fd 1 after the program's buffered output, one marker line per test.
_TEST_STUB = """

def __srpo_tests(tests, setup, entry_point, marker):
    import json, os, sys, traceback, types

    def verdict(index, failure):
        try:
            sys.stdout.flush()
        finally:
            os.write(1, ("\\n" + marker + json.dumps([index, failure]) + "\\n").encode())

    def describe(exc, source, filename):
        text = traceback.format_exception_only(type(exc), exc)[-1].strip()
        frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == filename]
        lines = source.splitlines()
        if frames and 0 < frames[-1].lineno <= len(lines):
            text += " at `" + lines[frames[-1].lineno - 1].strip() + "`"
        return text[:1000]

    sys.modules.setdefault("solution", sys.modules[__name__])  # `from solution import f` (pytest-style sets)
    try:
        # In the program's own globals, as MBPP's harness runs it: the program's functions see its names.
        exec(compile(setup, "<test setup>", "exec"), globals())
        base = dict(globals())
        candidate = base.get(entry_point) if entry_point else None
        if entry_point and not callable(candidate):
            raise NameError("the program does not define " + entry_point + "()")
    except BaseException as exc:
        for index in range(len(tests)):
            verdict(index, describe(exc, setup, "<test setup>"))
        return
    def call_test(fn, namespace):
        # pytest semantics, as far as __srpo_pytest provides them: one call per parametrize case,
        # the other parameters filled from fixtures (a generator fixture is torn down after the call).
        code = fn.__code__
        params = code.co_varnames[int(hasattr(fn, "__self__")) : code.co_argcount]
        for case in getattr(fn, "srpo_cases", [{}]):
            args, teardown = dict(case), []
            try:
                for name in params:
                    if name in args:
                        continue
                    pytest = sys.modules.get("pytest")
                    provider = getattr(pytest, name, None) if name == "capsys" else namespace.get(name)
                    if not getattr(provider, "srpo_fixture", False):
                        raise TypeError("fixture '" + name + "' is not available in the sandbox")
                    value = provider()
                    if isinstance(value, types.GeneratorType):
                        teardown.append(value)
                        value = next(value)
                    args[name] = value
                fn(**args)
            finally:
                for generator in teardown:
                    next(generator, None)

    def run_case(case):
        unittest = sys.modules["unittest"]
        result = unittest.TestResult()
        unittest.defaultTestLoader.loadTestsFromTestCase(case).run(result)
        if not result.wasSuccessful():
            test, trace = (result.failures + result.errors)[0]
            raise AssertionError(test.id().rsplit(".", 1)[-1] + ": " + trace.strip().splitlines()[-1])

    for index, source in enumerate(tests):
        namespace = dict(base)
        try:
            exec(compile(source, "<test>", "exec"), namespace)
            unittest = sys.modules.get("unittest")
            for name, value in list(namespace.items()):
                if base.get(name) is value:
                    continue
                if isinstance(value, types.FunctionType):
                    if name == "check" and entry_point:
                        value(candidate)
                    elif name.startswith("test") and not getattr(value, "srpo_fixture", False):
                        call_test(value, namespace)
                elif unittest is not None and isinstance(value, type) and issubclass(value, unittest.TestCase):
                    run_case(value)
                elif isinstance(value, type) and name.startswith("Test"):  # pytest test class
                    instance = value()
                    for method in [m for m in vars(value) if m.startswith("test")]:
                        call_test(getattr(instance, method), namespace)
        except BaseException as exc:
            verdict(index, describe(exc, source, "<test>"))
        else:
            verdict(index, None)
"""


# Put before the test stub when a test mentions pytest (or capsys): the sandbox's `python -I -S` has none.
_PYTEST_STUB = """

def __srpo_pytest():
    # What pytest-style test sets use most: raises, approx, mark.parametrize (other marks are ignored),
    # fixture (plain or yield) and the capsys fixture. Registered as `pytest` only if none is importable.
    import io, math, re, sys, types

    class RaisesContext:
        def __init__(self, expected, match=None):
            self.expected, self.match, self.type, self.value = expected, match, None, None

        def __enter__(self):
            return self

        def __exit__(self, kind, value, traceback):
            if kind is None:
                raise AssertionError("DID NOT RAISE " + repr(self.expected))
            if not issubclass(kind, self.expected):
                return False
            if self.match is not None and not re.search(self.match, str(value)):
                raise AssertionError("Regex " + repr(self.match) + " does not match " + repr(str(value)))
            self.type, self.value = kind, value
            return True

    class approx:
        def __init__(self, expected, rel=1e-6, abs=1e-12):
            self.expected, self.rel, self.abs = expected, rel, abs

        def __eq__(self, actual):
            expected, close = self.expected, lambda e, a: approx(e, self.rel, self.abs) == a
            if isinstance(expected, dict):
                return isinstance(actual, dict) and actual.keys() == expected.keys() and all(
                    close(v, actual[k]) for k, v in expected.items())
            if isinstance(expected, (list, tuple)):
                return len(actual) == len(expected) and all(map(close, expected, actual))
            return actual == expected or math.isclose(actual, expected, rel_tol=self.rel, abs_tol=self.abs)

        def __repr__(self):
            return "approx(" + repr(self.expected) + ")"

    def parametrize(names, values, **options):
        names = [n.strip() for n in names.split(",")] if isinstance(names, str) else list(names)

        def mark(fn):
            cases = getattr(fn, "srpo_cases", [{}])
            fn.srpo_cases = [{**case, **dict(zip(names, value if len(names) > 1 else (value,)))}
                             for case in cases for value in values]
            return fn
        return mark

    class Mark:
        def __getattr__(self, name):
            if name == "parametrize":
                return parametrize
            return lambda *args, **kwargs: args[0] if len(args) == 1 and callable(args[0]) else (lambda fn: fn)

    def fixture(fn=None, **options):
        if fn is None:
            return fixture
        fn.srpo_fixture = True
        return fn

    def capsys():
        saved = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = io.StringIO(), io.StringIO()

        def readouterr():
            out, err = sys.stdout.getvalue(), sys.stderr.getvalue()
            for stream in (sys.stdout, sys.stderr):
                stream.seek(0)
                stream.truncate()
            return types.SimpleNamespace(out=out, err=err)
        try:
            yield types.SimpleNamespace(readouterr=readouterr)
        finally:
            sys.stdout, sys.stderr = saved

    pytest = types.ModuleType("pytest")
    pytest.raises, pytest.approx, pytest.mark, pytest.fixture = RaisesContext, approx, Mark(), fixture
    pytest.capsys = fixture(capsys)
    return pytest


try:
    import pytest
except ImportError:
    import sys
    sys.modules["pytest"] = __srpo_pytest()
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
    """A row's stdin or function-call test cases in one normalised form: one sandbox run per case."""

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

    @property
    def n_tests(self) -> int:
        return len(self.inputs)

    def tests_run(self, n_runs: int) -> int:
        """Tests decided by the first `n_runs` sandbox runs: one each."""
        return n_runs

    def source(self, program: str, marker: str) -> str:
        """The program to run: as written (stdin tests) or followed by the call stub."""
        if self.fn_name is None:
            return program
        return program + _CALL_STUB.format(name=self.fn_name, marker=marker)

    def failures(self, index: int, outcome: RunOutcome, marker: str) -> dict[int, str]:
        """{test index: why it failed} for sandbox run `index` (test `index`); empty when it passed."""
        failure = self.check(index, outcome, marker)
        return {} if failure is None else {index: failure}

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


@dataclass(frozen=True)
class TestProgram:
    """Python test code run against the candidate program (HumanEval, MBPP, pytest-style sets).

    The candidate and the tests are one program, run once: the candidate's code first, then
    `setup` and each test in turn, each test in its own copy of the program's globals. A test runs
    its top-level code (`assert` lines), then `check(candidate)` when it defines `check` and an
    `entry_point` is given (HumanEval), then every `test*` function, `Test*` class and
    `unittest.TestCase` it defines (pytest / unittest style; the program is importable as `solution`;
    without pytest in the sandbox, tests that use it get its raises, approx, mark.parametrize, fixture
    and capsys from a small stand-in, and other fixtures fail the test naming them).
    A test passes when all of that returns; an assert or any exception fails it with the exception and
    the test line as the reason, never the grader. Test code that cannot fail (no assert, raise or
    assert* call) is rejected when parsed: it would pass any program.
    A test passes only on a verdict line carrying the per-call marker, so a program that exits early
    (`sys.exit(0)`, `os._exit(0)`) passes nothing.

    What the one-program design cannot hide: the test code travels inside the program's source, not
    on stdin, in files or in arguments, so the candidate cannot read it by I/O; but it shares one
    interpreter with its tests, so a program that introspects its own code object or the runner's
    memory can find the tests and the marker, and one that patches builtins or returns objects whose
    `__eq__` always holds can fool a test (as in the reference harnesses). Stdin and function-call
    tests keep their expected outputs out of the sandbox altogether.
    """

    tests: tuple[str, ...]
    setup: str = ""
    entry_point: str | None = None

    @classmethod
    def from_tests(cls, tests: Mapping) -> TestProgram:
        """Parse `{"test_code": str | [str, ...], "setup_code"?, "entry_point"?}`; malformed ones raise."""
        code = tests["test_code"]
        code = [code] if isinstance(code, str) else code
        if not isinstance(code, (list, tuple)) or not code or not all(isinstance(t, str) and t.strip() for t in code):
            raise ValueError(f"'test_code' must be Python code or a non-empty list of it; got {str(code)[:200]!r}")
        setup = tests.get("setup_code") or ""
        entry_point = tests.get("entry_point") or None
        if not isinstance(setup, str):
            raise ValueError(f"'setup_code' must be Python code; got {type(setup).__name__}")
        if entry_point is not None and not (isinstance(entry_point, str) and entry_point.isidentifier()):
            raise ValueError(f"'entry_point' must be a Python name; got {entry_point!r}")
        _parse_python(setup, "setup_code")
        for index, source in enumerate(code):
            _check_test(_parse_python(source, f"test_code[{index}]"), f"test_code[{index}]", entry_point)
        return cls(tuple(code), setup, entry_point)

    @property
    def inputs(self) -> tuple[bytes, ...]:
        """One sandbox run, on empty stdin, decides every test."""
        return (b"",)

    @property
    def n_tests(self) -> int:
        return len(self.tests)

    def tests_run(self, n_runs: int) -> int:
        """Tests decided by the first `n_runs` sandbox runs: all of them by the one run."""
        return self.n_tests if n_runs else 0

    def source(self, program: str, marker: str) -> str:
        """The candidate program followed by the test stub and its call."""
        call = f"__srpo_tests({self.tests!r}, {self.setup!r}, {self.entry_point!r}, {marker!r})\n"
        pytest = _PYTEST_STUB if any("pytest" in test or "capsys" in test for test in self.tests) else ""
        return program + pytest + _TEST_STUB + call

    def failures(self, index: int, outcome: RunOutcome, marker: str) -> dict[int, str]:
        """{test index: why it failed}; a test without a verdict fails with the run's own failure."""
        verdicts: dict[int, str | None] = {}
        stdout = outcome.stdout.decode(errors="replace")
        for line in stdout.split("\n"):
            at = line.find(marker)
            if at < 0:
                continue
            try:
                test, failure = json.loads(line[at + len(marker) :])
            except (ValueError, TypeError):
                continue
            if isinstance(test, int) and 0 <= test < self.n_tests and (failure is None or isinstance(failure, str)):
                verdicts.setdefault(test, failure)
        missing = "the program ended before this test ran" if outcome.status == "ok" else _failure(outcome)
        failures = {test: verdicts.get(test, missing) for test in range(self.n_tests)}
        return {test: reason for test, reason in failures.items() if reason is not None}


def _parse_python(source: str, name: str) -> ast.Module:
    try:
        return ast.parse(source, f"<{name}>")  # parsed only, never run in this process
    except (SyntaxError, ValueError) as err:
        raise ValueError(f"'{name}' is not valid Python: {err}") from None


def _check_test(tree: ast.Module, name: str, entry_point: str | None) -> None:
    """A test must be able to fail, and `check(candidate)` needs the entry point to pass in."""
    if entry_point is None and any(isinstance(node, ast.FunctionDef) and node.name == "check" for node in tree.body):
        raise ValueError(f"'{name}' defines check(candidate) but no 'entry_point' names the function to pass it")
    for node in ast.walk(tree):
        if isinstance(node, (ast.Assert, ast.Raise)):
            return
        if isinstance(node, ast.Call):
            called = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if "assert" in called.lower() or called == "fail":
                return
    raise ValueError(f"'{name}' has no assert, raise or assert*() call: it would pass any program")


CodeTests = TestSuite | TestProgram


def parse_tests(tests: Mapping | str) -> CodeTests:
    """A row's `tests` (dict or JSON string) as the suite that runs them; a malformed one raises."""
    if isinstance(tests, str):
        tests = json.loads(tests)
    if isinstance(tests, Mapping) and "test_code" in tests:
        return TestProgram.from_tests(tests)
    return TestSuite.from_tests(tests)


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
    suite = parse_tests(tests)
    if program is None:
        return _NO_PROGRAM
    return _run_tests(program, suite, sandbox or Sandbox(), partial_credit)


def _run_tests(program: str, suite: CodeTests, sandbox: Sandbox, partial_credit: bool) -> RewardResult:
    """Run one program against its tests in the sandbox and score it."""
    marker = f"@@srpo-result-{uuid.uuid4().hex}@@"
    failures: dict[int, str] = {}

    def stop(index: int, outcome: RunOutcome) -> bool:
        found = suite.failures(index, outcome, marker)
        failures.update(found)
        return bool(found) and not partial_credit

    report = sandbox.run(suite.source(program, marker), suite.inputs, stop)
    return _score(report, failures, suite, partial_credit)


def _score(report: SandboxReport, failures: dict[int, str], suite: CodeTests, partial_credit: bool) -> RewardResult:
    if report.infrastructure_failure:  # the sandbox failed, not the program: no reward either way
        return RewardResult.unscored(f"sandbox failed: {report.detail[:_REASON_CHARS]}")
    if report.status == "compile_error":
        last_line = (report.detail.splitlines() or ["?"])[-1]
        return RewardResult(0.0, f"compile error: {last_line[:_REASON_CHARS]}")
    ran, n_tests = suite.tests_run(len(report.runs)), suite.n_tests
    if report.status == "timeout":
        failures.setdefault(ran, "timeout")
    passed = ran - len([i for i in failures if i < ran])
    if passed == n_tests:
        return RewardResult(1.0, f"passed {n_tests}/{n_tests} tests")
    first = min(failures)
    reason = f"test {first + 1}/{n_tests}: {failures[first][:_REASON_CHARS]}"
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
    """`code_reward` over a batch, in input order: up to `workers` sandboxed programs run at once.

    Each distinct (program, tests) pair runs once and its result is shared by every response that
    extracts to it: a group of G samples from a confident policy repeats the same program many times.
    """
    if len(responses) != len(tests):
        raise ValueError(f"got {len(responses)} responses but {len(tests)} test sets; pass one per response")
    if workers < 1:
        raise ValueError(f"code_reward_batch workers must be >= 1 (got {workers})")
    sandbox = sandbox or Sandbox()
    suites: dict[str, CodeTests] = {}
    keys: list[tuple[str, str] | None] = []
    for response, row_tests in zip(responses, tests):
        tests_key = row_tests if isinstance(row_tests, str) else json.dumps(row_tests, sort_keys=True, default=str)
        if tests_key not in suites:
            suites[tests_key] = parse_tests(row_tests)  # malformed tests raise before anything runs
        program = extract_program(response, extraction)
        keys.append(None if program is None else (program, tests_key))
    unique = list(dict.fromkeys(key for key in keys if key is not None))

    def score(key: tuple[str, str]) -> RewardResult:
        return _run_tests(key[0], suites[key[1]], sandbox, partial_credit)

    # Threads suffice: each one waits on its sandbox process, which does the work.
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="srpo-code-reward") as pool:
        results = dict(zip(unique, pool.map(score, unique)))
    return [_NO_PROGRAM if key is None else results[key] for key in keys]
