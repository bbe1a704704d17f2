"""Hostile programs against their neighbours and the answers: fairness, secrecy, infrastructure failures.

Each test runs real programs in the real sandbox with short limits, and stays bounded (< ~20 s).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from srpo_megatron.rewards.code import code_reward, code_reward_batch
from srpo_megatron.rewards.sandbox import Sandbox, SandboxConfig, SandboxError
from srpo_megatron.rewards.types import RewardResult

REPO_ROOT = Path(__file__).resolve().parents[2]
NAMESPACES = shutil.which("unshare") is not None
# As root without a mount namespace the dropped uid cannot enter a Python under /root (0700).
SYSTEM_PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
needs_namespaces = pytest.mark.skipif(not NAMESPACES, reason="needs util-linux unshare")

FORK_BOMB = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"
# Sleeps so that its runs overlap the bomb's; the runner forks once per test.
HONEST = "import time\ntime.sleep(0.2)\na, b = map(int, input().split())\nprint(a + b)"
ADD3 = {"inputs": ["1 2\n", "3 4\n", "5 6\n"], "outputs": ["3\n", "7\n", "11\n"]}


def fenced(program: str) -> str:
    return f"```python\n{program}\n```"


@needs_namespaces
def test_fork_bomb_does_not_starve_concurrent_honest_programs() -> None:
    """Each sandbox has its own process limit: the honest programs beside two bombs all pass."""
    sandbox = Sandbox(SandboxConfig(timeout_s=1.5, max_processes=64))
    programs = [FORK_BOMB] + [HONEST] * 3 + [FORK_BOMB] + [HONEST] * 3
    # Distinct sources: identical (program, tests) pairs would be run once and share a result.
    responses = [fenced(f"# rollout {i}\n{program}") for i, program in enumerate(programs)]
    results = code_reward_batch(responses, [ADD3] * len(responses), sandbox=sandbox, workers=4)
    assert [r.score for r in results] == [0.0, 1.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0], [r.reason for r in results]


@needs_namespaces
def test_concurrent_sandboxes_run_as_distinct_unprivileged_uids() -> None:
    if os.geteuid() != 0:
        pytest.skip("per-sandbox uids are the root mode (without root each sandbox has its own user namespace)")
    sandbox = Sandbox(SandboxConfig(timeout_s=2.0))
    program = "import os, time\ntime.sleep(0.5)\nprint(os.getuid())"
    with ThreadPoolExecutor(3) as pool:
        reports = list(pool.map(lambda _: sandbox.run(program, [""]), range(3)))
    uids = {int(r.runs[0].stdout) for r in reports}
    first, count = sandbox.config.uids
    assert len(uids) == 3 and all(first <= uid < first + count for uid in uids), uids


@pytest.fixture
def planted_answer():
    """A dataset row whose expected output is a fresh secret, written where the data of a run lives
    (inside the repository, world-readable), and the stdin test that asks for it by id."""
    secret, row_id = uuid.uuid4().hex, f"row-{uuid.uuid4().hex[:8]}"
    data_dir = REPO_ROOT / f".sandbox-hunt-{uuid.uuid4().hex[:8]}"
    data_dir.mkdir()
    row = {"id": row_id, "tests": {"inputs": [row_id + "\n"], "outputs": [secret + "\n"]}}
    (data_dir / "train.jsonl").write_text(json.dumps(row) + "\n")
    os.chmod(data_dir, 0o755)
    os.chmod(data_dir / "train.jsonl", 0o644)
    yield data_dir, row
    shutil.rmtree(data_dir)


# Walks the filesystem for jsonl files that mention its input, and prints the expected output.
HUNTER = """
import json, os, sys, time
key = input().strip()
start = time.monotonic()
for top, dirs, files in os.walk('/'):
    dirs[:] = [d for d in dirs if d not in ('proc', 'sys', 'dev', 'usr', 'lib', '.venv', '.venv-launch', '.git')]
    for name in files:
        if name.endswith('.jsonl') and time.monotonic() - start < 3:
            try:
                for line in open(os.path.join(top, name)):
                    if key in line:
                        print(json.loads(line)['tests']['outputs'][0].strip())
                        sys.exit(0)
            except (OSError, ValueError, KeyError):
                pass
print('not found')
"""


@needs_namespaces
def test_program_hunting_the_data_for_its_answer_scores_zero(planted_answer) -> None:
    data_dir, row = planted_answer
    sandbox = Sandbox(SandboxConfig(timeout_s=5.0))
    result = code_reward(fenced(HUNTER), row["tests"], sandbox=sandbox)
    assert result == RewardResult(0.0, "test 1/1: wrong answer")


@needs_namespaces
def test_filesystem_is_deny_by_default() -> None:
    """Only the interpreter, system libraries and the scratch dir exist inside."""
    sandbox = Sandbox(SandboxConfig(timeout_s=2.0))
    probe = (
        "import os, sys\n"
        "for path in sys.argv[1:] or input().split():\n"
        "    print(path, os.path.exists(path))"
    )
    hidden = [str(REPO_ROOT), "/home", "/work", "/etc/hostname", "/var/log", "/usr/bin", "/opt", "/srv"]
    report = sandbox.run(probe, [" ".join(hidden)])
    seen = dict(line.split() for line in report.runs[0].stdout.decode().splitlines())
    assert seen == {path: "False" for path in hidden}, report.runs[0]
    # A home that holds the interpreter (pyenv under /root) shows only the way to it.
    home = sandbox.run("import os\nprint(sorted(os.listdir('/root')) if os.path.exists('/root') else [])", [""])
    inside = Path(sys.base_prefix).parts[2:3] if sys.base_prefix.startswith("/root/") else ()
    assert home.runs[0].stdout.decode().strip() == str(sorted(inside))
    honest = sandbox.run("import json, decimal, fractions, heapq\nprint(json.dumps([1]))", [""])
    assert honest.runs[0].stdout == b"[1]\n", honest.runs[0].stderr


@needs_namespaces
def test_exposed_paths_are_read_only() -> None:
    library = REPO_ROOT / f".sandbox-lib-{uuid.uuid4().hex[:8]}"
    library.mkdir(mode=0o755)
    try:
        (library / "helper.txt").write_text("42\n")
        os.chmod(library / "helper.txt", 0o644)
        sandbox = Sandbox(SandboxConfig(timeout_s=2.0, exposed_paths=(str(library),)))
        program = (
            f"print(open({str(library / 'helper.txt')!r}).read().strip())\n"
            f"try:\n    open({str(library / 'new')!r}, 'w')\nexcept OSError as e:\n    print(e.errno)"
        )
        report = sandbox.run(program, [""])
        assert report.runs[0].stdout.split()[0] == b"42"
        assert not (library / "new").exists()
    finally:
        shutil.rmtree(library)


def test_infrastructure_crash_is_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    """A runner that dies for reasons of the host is started again; the program's runs all count."""
    sandbox = Sandbox(SandboxConfig(timeout_s=2.0, allow_without_namespaces=not NAMESPACES))
    real_popen, starts = subprocess.Popen, []

    def flaky_popen(*args, **kwargs):
        starts.append(1)
        if len(starts) == 1:
            raise BlockingIOError(11, "Resource temporarily unavailable")  # fork() EAGAIN
        return real_popen(*args, **kwargs)

    monkeypatch.setattr(subprocess, "Popen", flaky_popen)
    result = code_reward(fenced("a, b = map(int, input().split())\nprint(a + b)"), ADD3, sandbox=sandbox)
    assert result == RewardResult(1.0, "passed 3/3 tests") and len(starts) == 2


def test_persistent_infrastructure_failure_is_reported_as_crashed(monkeypatch: pytest.MonkeyPatch) -> None:
    sandbox = Sandbox(SandboxConfig(timeout_s=2.0, infra_retries=2, allow_without_namespaces=not NAMESPACES))
    starts = []

    def broken_popen(*args, **kwargs):
        starts.append(1)
        raise BlockingIOError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(subprocess, "Popen", broken_popen)
    report = sandbox.run("print(1)", ["", ""])
    assert report.status == "crashed" and report.infrastructure_failure
    assert "3 attempts" in report.detail and len(starts) == 3


def test_unscored_result_is_distinct() -> None:
    unscored = RewardResult.unscored("sandbox unavailable")
    assert unscored.score == 0.0 and not unscored.scored
    assert RewardResult(0.0, "wrong answer").scored
    assert unscored != RewardResult(0.0, "sandbox unavailable")


def test_refuses_to_run_without_namespaces_unless_opted_in() -> None:
    with pytest.raises(SandboxError, match="allow_without_namespaces"):
        Sandbox(SandboxConfig(use_namespaces=False))
    unisolated = Sandbox(SandboxConfig(use_namespaces=False, allow_without_namespaces=True, python=SYSTEM_PYTHON))
    assert "mount_namespace" not in unisolated.layers


def test_without_namespaces_setsid_children_do_not_outlive_the_run() -> None:
    if os.geteuid() != 0:
        pytest.skip("cleaning up by uid needs root")
    sandbox = Sandbox(
        SandboxConfig(timeout_s=2.0, use_namespaces=False, allow_without_namespaces=True, python=SYSTEM_PYTHON)
    )
    program = (
        "import os, time\npid = os.fork()\n"
        "if pid == 0:\n    os.setsid()\n    time.sleep(60)\n    os._exit(0)\n"
        "print(pid)"
    )
    report = sandbox.run(program, [""])
    orphan = int(report.runs[0].stdout)
    deadline = time.monotonic() + 3
    while os.path.exists(f"/proc/{orphan}") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not os.path.exists(f"/proc/{orphan}"), "a setsid() child outlived its run"


def test_unscored_rollout_excludes_its_group_from_the_advantage() -> None:
    import torch

    from srpo_megatron.algorithms.advantages import AdvantageConfig, compute_advantages

    rewards = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0, 0.0])  # 3 groups of 2; group 1's 0.0 is made up
    unscored = torch.tensor([False, False, False, True, False, False])
    out = compute_advantages(rewards, 2, AdvantageConfig(), unscored=unscored)
    assert out.excluded_groups.tolist() == [False, True, False]
    assert out.advantages[2:4].tolist() == [0.0, 0.0]
    assert out.advantages[0] > 0 and out.advantages[4] > 0
    assert compute_advantages(rewards, 2, AdvantageConfig()).excluded_groups.tolist() == [False] * 3
    with pytest.raises(ValueError, match="unscored mask shape"):
        compute_advantages(rewards, 2, AdvantageConfig(), unscored=unscored[:4])


def test_unscored_rollouts_are_counted_and_left_out_of_the_means() -> None:
    from srpo_megatron.metrics import SampleRecord, sample_metrics

    judged = SampleRecord("code", 1.0, 1.0, 10, False, False, False)
    lost = SampleRecord("code", 0.0, 0.0, 10, False, False, False, scored=False)
    metrics = sample_metrics([judged, lost])
    assert metrics["unscored"] == 1 and metrics["accuracy"] == 1.0 and metrics["accuracy/code"] == 1.0


def test_scorer_marks_a_sample_unscored_when_the_sandbox_keeps_failing(monkeypatch: pytest.MonkeyPatch) -> None:
    from srpo_megatron.rewards.combine import RewardConfig, RewardScorer

    sandbox = SandboxConfig(timeout_s=2.0, infra_retries=1, allow_without_namespaces=not NAMESPACES)
    config = RewardConfig(sandbox=sandbox)

    def broken_popen(*args, **kwargs):
        raise BlockingIOError(11, "Resource temporarily unavailable")

    with RewardScorer(config) as scorer:
        monkeypatch.setattr(subprocess, "Popen", broken_popen)
        row = {"id": "r", "domain": "code", "tests": ADD3}
        [scored] = scorer.score([row], [fenced("print(3)")])
    assert not scored.scored and scored.accuracy == 0.0, scored


NON_ROOT_CHECK = """
import json
from concurrent.futures import ThreadPoolExecutor
from srpo_megatron.rewards.sandbox import Sandbox, SandboxConfig
sandbox = Sandbox(SandboxConfig(timeout_s=1.5, max_processes=64, python={python!r}))
programs = [{bomb!r}, {honest!r}, {honest!r}, {honest!r}]
with ThreadPoolExecutor(4) as pool:
    reports = list(pool.map(lambda p: sandbox.run(p, ["1 2\\n", "3 4\\n", "5 6\\n"]), programs))
probe = sandbox.run("import os\\nprint([p for p in ({repo!r}, '/home', '/work') if os.path.exists(p)])", [""])
print(json.dumps({{"layers": sorted(sandbox.layers), "probe": probe.runs[0].stdout.decode(),
                  "outputs": [[run.stdout.decode() for run in r.runs] for r in reports]}}))
"""


@needs_namespaces
def test_without_root_each_sandbox_has_its_own_user_namespace_and_limit() -> None:
    """What a Slurm job sees: no root. User namespaces give the same fairness and the same view."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None or SYSTEM_PYTHON == sys.executable:
        pytest.skip("needs root (to become nobody), setpriv and a system Python nobody can run")
    script = NON_ROOT_CHECK.format(python=SYSTEM_PYTHON, bomb=FORK_BOMB, honest=HONEST, repo=str(REPO_ROOT))
    proc = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", SYSTEM_PYTHON, "-c", script],
        capture_output=True, text=True, timeout=60, cwd="/tmp",
        env={"PYTHONPATH": str(REPO_ROOT), "PATH": os.environ["PATH"]},
    )
    if "cannot isolate programs" in proc.stderr:
        pytest.skip(f"this host refuses user namespaces to non-root users: {proc.stderr[-300:]}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    layers = set(result["layers"])
    assert {"private_root", "nproc_limit", "pid_namespace"} <= layers and "uid_drop" not in layers
    assert result["probe"] == "[]\n"
    assert result["outputs"][1:] == [["3\n", "7\n", "11\n"]] * 3, result["outputs"]


@needs_namespaces
def test_filling_the_scratch_dir_stops_at_its_size() -> None:
    """Writes land in a size-limited tmpfs, not on the host's disk."""
    sandbox = Sandbox(SandboxConfig(timeout_s=5.0, scratch_mb=8, max_file_mb=4))
    program = (
        "import os\nwritten = 0\n"
        "for i in range(100):\n"
        "    try:\n"
        "        with open(f'/var/tmp/f{i}', 'wb') as f:\n"
        "            f.write(bytes(1 << 20) * 4)\n"
        "        written += 4\n"
        "    except OSError as exc:\n"
        "        print(written, exc.errno)\n"
        "        break"
    )
    report = sandbox.run(program, [""])
    written, errno = map(int, report.runs[0].stdout.split())
    assert written <= 8 and errno == 28, report.runs[0]  # ENOSPC
