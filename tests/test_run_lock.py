"""One trainer per run directory, and ranks that die with their torchrun."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from srpo_megatron.run_lock import RunDirInUse, RunLock

HOLD = "import sys, time; from srpo_megatron.run_lock import RunLock; RunLock(sys.argv[1]); print('held', flush=True); time.sleep(600)"


def test_second_holder_is_refused_with_the_holder_named(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunDirInUse, match=rf"pid {holder.pid} on host {socket.gethostname()}"):
            RunLock(tmp_path)
    finally:
        holder.kill()  # SIGKILL: no clean-up; the kernel releases the lock
        holder.wait()
    with RunLock(tmp_path) as lock:  # a dead holder does not lock the directory
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()
    RunLock(tmp_path).release()  # released on exit


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory, tiny_qwen) -> Path:
    root = tmp_path_factory.mktemp("lock")
    rows = [{"id": f"m{i}", "prompt": f"What is {i} + 1?", "answer": str(i + 1)} for i in range(4)]
    (root / "math.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = root / "config.yaml"
    config.write_text(f"""
model: {{hf_path: {tiny_qwen}}}
data: {{math: [{root}/math.jsonl], prompts_per_step: 2}}
stages: [{{name: s, mixture: {{math: 1.0}}, steps: 50}}]
rollout: {{n_samples_per_prompt: 2, max_response_tokens: 8, max_model_len: 128,
          cpu_kvcache_space_gib: 0.1, dtype: float32, enforce_eager: true}}
training: {{steps: 50, micro_batch_size: 2}}
""")
    return config


def _torchrun(config: Path, run_dir: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "srpo_megatron.train",
           "--config", str(config), f"training.run_dir={run_dir}"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"})


def _ranks(torchrun: subprocess.Popen, timeout: float = 120) -> list[psutil.Process]:
    """torchrun's two worker processes, once both run srpo_megatron.train."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        workers = [p for p in psutil.Process(torchrun.pid).children() if "srpo_megatron.train" in p.cmdline()]
        if len(workers) == 2:
            return workers
        assert torchrun.poll() is None, torchrun.stdout.read()[-3000:]
        time.sleep(0.2)
    raise AssertionError("torchrun did not start 2 ranks")


def _kill_all(processes: list[psutil.Process]) -> None:
    for p in processes:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass


def test_second_trainer_on_a_locked_run_dir_fails_naming_the_holder(tiny_config, tmp_path):
    with RunLock(tmp_path / "run"):
        proc = _torchrun(tiny_config, tmp_path / "run")
        try:
            out, _ = proc.communicate(timeout=240)
        finally:
            proc.kill()
    assert proc.returncode != 0
    assert f"is in use by another trainer: pid {os.getpid()} on host {socket.gethostname()}" in out, out[-3000:]
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_kill_9_of_torchrun_kills_its_ranks(tiny_config, tmp_path):
    proc = _torchrun(tiny_config, tmp_path / "run")
    ranks = _ranks(proc)
    descendants = ranks
    try:
        deadline = time.time() + 300
        while not (tmp_path / "run" / "metrics.jsonl").exists():  # training: rollouts, grading workers
            assert time.time() < deadline and proc.poll() is None, "the run did not reach step 1"
            time.sleep(0.2)
        descendants = ranks + [c for r in ranks for c in r.children(recursive=True)]
        os.kill(proc.pid, signal.SIGKILL)  # torchrun alone: no clean-up of any kind
        proc.wait()
        gone, alive = psutil.wait_procs(descendants, timeout=15)
        assert not alive, f"{[(p.pid, p.cmdline()[:3]) for p in alive]} outlived their torchrun"
        RunLock(tmp_path / "run").release()  # and rank 0's lock died with it
    finally:
        _kill_all(descendants)
