"""Code reward and the sandbox: honest programs pass, hostile ones score 0 and the test process lives."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import socket
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest

from srpo_megatron.rewards.code import (
    ProgramExtraction,
    TestSuite,
    code_reward,
    code_reward_batch,
    extract_program,
)
from srpo_megatron.rewards.sandbox import Sandbox, SandboxConfig
from srpo_megatron.rewards.types import RewardResult

REPO_ROOT = Path(__file__).resolve().parents[2]
ADD_STDIN = {"inputs": ["1 2\n", "3 4\n"], "outputs": ["3\n", "7\n"]}
ADD_CALL = {"fn_name": "add", "inputs": [[1, 2], [3, 4]], "outputs": [3, 7]}
IS_ROOT = os.geteuid() == 0
HAS_NAMESPACES = shutil.which("unshare") is not None


def fenced(program: str) -> str:
    return f"Here is my solution.\n```python\n{program}\n```\nDone."


# --- extraction and test parsing -------------------------------------------------------------------


def test_extract_program_takes_last_python_block() -> None:
    response = (
        "```python\nprint(1)\n```\ntext\n```text\nnot code\n```\n```Python\nprint(2)\n```\n```py\nunclosed"
    )
    assert extract_program(response) == "print(2)"
    assert extract_program("```\nprint(3)\n```") is None
    assert extract_program("```\nprint(3)\n```", ProgramExtraction(any_language_fallback=True)) == "print(3)"
    assert extract_program("```cpp\nint x;\n```", ProgramExtraction(languages=("cpp",))) == "int x;"


def test_test_suite_forms() -> None:
    stdin = TestSuite.from_tests(json.dumps({"inputs": [["1 2", "3"]], "outputs": [["3", "4"]]}))
    assert stdin.fn_name is None and stdin.inputs == (b"1 2\n3\n",) and stdin.expected == ("3\n4\n",)
    lcb = TestSuite.from_tests({"fn_name": "f", "inputs": ["[1, 2]\n3"], "outputs": ["[4]"]})
    assert lcb.inputs == (b"[[1, 2], 3]",) and lcb.expected == ([4],)
    with pytest.raises(ValueError, match="'inputs' and 'outputs'"):
        TestSuite.from_tests({"input": ["1"]})
    with pytest.raises(ValueError, match="one output per input"):
        TestSuite.from_tests({"inputs": ["1", "2"], "outputs": ["1"]})


# --- honest programs -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("program", "tests"),
    [
        ("a, b = map(int, input().split())\nprint(a + b)", ADD_STDIN),
        ("import sys\nprint(sum(map(int, sys.stdin.buffer.read().split())))", ADD_STDIN),
        ("print(sum(map(int, open(0).read().split())), '  ')\nprint()\n", ADD_STDIN),  # trailing space/lines
        ("def add(a, b):\n    return a + b", ADD_CALL),
        ("class Solution:\n    def add(self, a, b):\n        return a + b", ADD_CALL),
        ("def add(a, b):\n    return a + b", {"fn_name": "add", "inputs": ["1\n2"], "outputs": ["3"]}),  # LCB
        ("def add(a, b):\n    return [a + b]", {"fn_name": "add", "inputs": [[1, 2]], "outputs": [[3]]}),
        (
            "def add(a, b):\n    return a + b",
            {"fn_name": "add", "inputs": [[1, 2]], "outputs": [[3]]},
        ),  # TACO
        (
            "def add(a, b):\n    return (a + b) / 3",
            {"fn_name": "add", "inputs": [[1, 0]], "outputs": [0.3333333]},
        ),
        (
            # Recursion through C (map) segfaults on the default 8 MiB stack: needs stack_mb.
            "import sys\nsys.setrecursionlimit(10**6)\n"
            "def d(n): return 0 if n == 0 else 1 + sum(map(d, [n - 1]))\nprint(d(30000))",
            {"inputs": [""], "outputs": ["30000"]},
        ),
    ],
)
def test_honest_programs_pass(sandbox: Sandbox, program: str, tests: dict) -> None:
    result = code_reward(fenced(program), tests, sandbox=sandbox)
    assert result.score == 1.0, result.reason
    assert result.reason.startswith("passed")


@pytest.mark.parametrize(
    ("program", "reason"),
    [
        ("print(0)", "test 1/2: wrong answer"),
        ("print(3)\nprint(4)", "test 1/2: wrong answer"),
        ("def f(:\n    pass", "compile error: SyntaxError: invalid syntax"),
        ("print(1)\x00", "compile error: SyntaxError: source code string cannot contain null bytes"),
        ("print(1 // 0)", "test 1/2: runtime error: ZeroDivisionError: integer division or modulo by zero"),
        ("import sys\nsys.exit(3)", "test 1/2: runtime error: exit code 3"),
    ],
)
def test_failing_programs_score_zero_with_reason(sandbox: Sandbox, program: str, reason: str) -> None:
    assert code_reward(fenced(program), ADD_STDIN, sandbox=sandbox) == RewardResult(0.0, reason)


def test_missing_code_block(sandbox: Sandbox) -> None:
    assert code_reward("I would use a loop.", ADD_STDIN, sandbox=sandbox) == RewardResult(
        0.0, "no code block found"
    )


def test_fn_name_failures(sandbox: Sandbox) -> None:
    assert code_reward(fenced("def add(a, b):\n    return a - b"), ADD_CALL, sandbox=sandbox).reason == (
        "test 1/2: wrong answer"
    )
    missing = code_reward(fenced("def plus(a, b):\n    return a + b"), ADD_CALL, sandbox=sandbox)
    assert missing.score == 0.0 and "runtime error" in missing.reason


def test_partial_credit_and_early_stop(sandbox: Sandbox) -> None:
    tests = {"inputs": ["1", "2", "3", "4"], "outputs": ["1", "0", "3", "0"]}
    echo = fenced("print(input())")
    assert code_reward(echo, tests, sandbox=sandbox, partial_credit=True) == RewardResult(
        0.5, "test 2/4: wrong answer"
    )
    # Without partial credit the sandbox stops at the first failure instead of running the rest.
    seen = []
    report = sandbox.run(
        "print(input())", ["1", "2", "3"], stop=lambda i, o: seen.append(i) or o.stdout != b"1\n"
    )
    assert report.status == "stopped" and seen == [0, 1] and len(report.runs) == 2


# --- hostile programs: score 0, a reason, and the side effect did not happen -----------------------


def test_infinite_loop_times_out(sandbox: Sandbox) -> None:
    start = time.monotonic()
    result = code_reward(fenced("while True:\n    pass"), ADD_STDIN, sandbox=sandbox)
    assert result == RewardResult(0.0, "test 1/2: timeout")
    assert time.monotonic() - start < 6.0  # 1 s limit; generous for a loaded machine


def test_sleeping_program_times_out_on_wall_clock(sandbox: Sandbox) -> None:
    result = code_reward(fenced("import time\ntime.sleep(30)"), ADD_STDIN, sandbox=sandbox)
    assert result == RewardResult(0.0, "test 1/2: timeout")


def test_fork_bomb_is_contained(sandbox: Sandbox) -> None:
    start = time.monotonic()
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"
    result = code_reward(fenced(bomb), ADD_STDIN, sandbox=sandbox)
    assert result.score == 0.0 and result.reason.startswith("test 1/2:")
    assert time.monotonic() - start < 10.0  # one 1 s run, plus killing and reaping a few hundred processes
    # Every bomb process is gone: the next program can fork and passes.
    honest = (
        "import os\nif os.fork() == 0:\n    os._exit(0)\nos.wait()\nprint(sum(map(int, input().split())))"
    )
    assert code_reward(fenced(honest), ADD_STDIN, sandbox=sandbox).score == 1.0


def test_memory_bomb_fails(sandbox: Sandbox) -> None:
    bomb = "blocks = []\nwhile True:\n    blocks.append(bytes(1 << 24))"
    assert code_reward(fenced(bomb), ADD_STDIN, sandbox=sandbox) == RewardResult(
        0.0, "test 1/2: runtime error: MemoryError"
    )


def test_output_flood_is_cut(sandbox: Sandbox) -> None:
    start = time.monotonic()
    flood = "import sys\nwhile True:\n    sys.stdout.write('x' * (1 << 20))"  # gigabytes if left alone
    assert code_reward(fenced(flood), ADD_STDIN, sandbox=sandbox) == RewardResult(
        0.0, "test 1/2: output limit exceeded"
    )
    assert time.monotonic() - start < 6.0


def test_writes_outside_scratch_do_not_land(sandbox: Sandbox) -> None:
    name = f"pwned-{uuid.uuid4().hex}"
    targets = [f"/tmp/{name}", f"/var/tmp/{name}", f"/dev/shm/{name}", str(REPO_ROOT / name)]
    program = (
        "for path in {!r}:\n    try:\n        open(path, 'w').write('x')\n    except OSError:\n        pass"
    )
    before = set(glob.glob(os.path.join(tempfile.gettempdir(), "srpo-sandbox-*")))
    result = code_reward(fenced(program.format(targets)), ADD_STDIN, sandbox=sandbox)
    assert result == RewardResult(0.0, "test 1/2: wrong answer")
    assert [t for t in targets if os.path.exists(t)] == []
    # The scratch directory itself is gone too.
    assert set(glob.glob(os.path.join(tempfile.gettempdir(), "srpo-sandbox-*"))) <= before


def test_environment_secret_does_not_leak(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = uuid.uuid4().hex
    monkeypatch.setenv("SECRET", secret)
    # The expected output IS the secret: a leak would score 1.
    leak = fenced("import os\nprint(os.environ.get('SECRET'))")
    assert code_reward(leak, {"inputs": [""], "outputs": [secret]}, sandbox=sandbox) == RewardResult(
        0.0, "test 1/1: wrong answer"
    )
    report = sandbox.run("import json, os\nprint(json.dumps(dict(os.environ)))", [""])
    environment = json.loads(report.runs[0].stdout)
    assert set(environment) == {"PATH", "HOME", "TMPDIR", "LANG"}
    assert secret not in report.runs[0].stdout.decode()


def test_killing_the_parent_fails_only_the_program(sandbox: Sandbox) -> None:
    program = (
        "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\nos.kill(int(input()), signal.SIGKILL)"
    )
    result = code_reward(fenced(program), {"inputs": [str(os.getpid())], "outputs": ["3"]}, sandbox=sandbox)
    assert result.score == 0.0 and result.reason.startswith("test 1/1: runtime error")
    # The runner survived its child's kill attempt: both runs were reported.
    report = sandbox.run("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\nprint('alive')", ["", ""])
    assert report.status == "completed" and len(report.runs) == 2
    assert os.getppid() > 0  # and this test process is, evidently, still running


@pytest.fixture
def listener():
    """A TCP listener on 127.0.0.1 that records every connection it receives."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.2)
    accepted: list = []
    done = threading.Event()

    def serve() -> None:
        while not done.is_set():
            with contextlib.suppress(OSError):  # the accept timeout: look at `done` again
                accepted.append(server.accept())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1], accepted
    done.set()
    thread.join()
    server.close()


def test_sockets_are_refused(sandbox: Sandbox, listener) -> None:
    port, accepted = listener
    program = "import socket\ns = socket.create_connection(('127.0.0.1', int(input())))\nprint('connected')"
    result = code_reward(fenced(program), {"inputs": [str(port)], "outputs": ["connected"]}, sandbox=sandbox)
    assert result.score == 0.0
    assert "network access is disabled" in result.reason
    assert accepted == []


@pytest.mark.skipif(not HAS_NAMESPACES, reason="needs util-linux unshare for a network namespace")
def test_raw_syscall_sockets_cannot_reach_the_host(sandbox: Sandbox, listener) -> None:
    """ctypes bypasses the audit hook; the network namespace still has no route to the listener."""
    port, accepted = listener
    program = (
        "import ctypes, struct\nlibc = ctypes.CDLL(None, use_errno=True)\nfd = libc.socket(2, 1, 0)\n"
        "port = struct.pack('!H', int(input()))\n"
        "address = struct.pack('<H', 2) + port + bytes([127, 0, 0, 1]) + bytes(8)\n"
        "print('connected' if libc.connect(fd, address, 16) == 0 else 'refused')"
    )
    result = code_reward(fenced(program), {"inputs": [str(port)], "outputs": ["connected"]}, sandbox=sandbox)
    assert result == RewardResult(0.0, "test 1/1: wrong answer")
    assert accepted == []


# --- the isolation layers themselves ---------------------------------------------------------------


def test_isolation_layers_on_this_host(sandbox: Sandbox) -> None:
    assert {"process", "rlimits", "audit_hook", "clean_env", "scratch_dir", "wall_clock"} <= sandbox.layers
    if IS_ROOT:
        assert {"uid_drop", "nproc_limit"} <= sandbox.layers
        report = sandbox.run("import os\nprint(os.getuid(), os.getgid(), os.getgroups())", [""])
        first, count = sandbox.config.uids  # each sandbox leases its own unprivileged uid
        assert first <= int(report.runs[0].stdout.split()[0]) < first + count
    if HAS_NAMESPACES:
        assert {"net_namespace", "pid_namespace", "mount_namespace"} <= sandbox.layers
        report = sandbox.run(
            "import os\nprint(os.getppid(), sorted(os.listdir('/proc'))[:0], os.getcwd())", [""]
        )
        assert report.runs[0].stdout.split()[0] == b"1"  # the runner is PID 1 of its own namespace


def test_host_directories_are_absent_inside(sandbox: Sandbox) -> None:
    # a world-readable directory outside the interpreter and the system libraries
    target = next((p for p in ("/usr/share/doc", "/usr/share", "/opt") if os.path.isdir(p) and os.listdir(p)), None)
    if target is None:
        pytest.skip("no populated world-readable directory on this machine")
    program = f"import os\nprint(os.path.exists({target!r}))"
    if HAS_NAMESPACES:
        assert sandbox.run(program, [""]).runs[0].stdout == b"False\n"  # deny by default
        exposing = Sandbox(SandboxConfig(timeout_s=1.0, exposed_paths=(target,)))
        assert exposing.run(program, [""]).runs[0].stdout == b"True\n"


def test_sandbox_config_validation() -> None:
    with pytest.raises(ValueError, match="SandboxConfig.timeout_s must be > 0"):
        SandboxConfig(timeout_s=0)
    with pytest.raises(ValueError, match="SandboxConfig.memory_mb must be >= 1"):
        SandboxConfig(memory_mb=0)


# --- batches ---------------------------------------------------------------------------------------


def test_batch_keeps_order_and_runs_in_parallel(sandbox: Sandbox) -> None:
    slow_ok = fenced("import time\ntime.sleep(0.7)\nprint(sum(map(int, input().split())))")
    responses = [slow_ok, fenced("print(0)"), slow_ok, "no code"]
    start = time.monotonic()
    results = code_reward_batch(responses, [ADD_STDIN] * 4, sandbox=sandbox, workers=2)
    elapsed = time.monotonic() - start
    assert [r.score for r in results] == [1.0, 0.0, 1.0, 0.0]
    assert results[3].reason == "no code block found"
    assert elapsed < 2.6  # 2 slow programs x 2 tests x 0.7 s each would take 2.8 s one after another
