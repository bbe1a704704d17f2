"""Real jobs through nemo-run on the local 2-node Slurm: rendezvous, preemption + requeue, training.

Each job runs torchrun from the training virtualenv, one rank per "node" (n1, n2 share this host).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytest.importorskip(
    "nemo_run", reason="launcher tests run in .venv-launch: .venv-launch/bin/python -m pytest tests/launch"
)

from srpo_megatron.launch.config import LaunchConfig, load_launch_config  # noqa: E402
from srpo_megatron.launch.submit import Submission, rank_task, submit, trainer_task  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
TERMINAL = {
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "BOOT_FAIL",
    "DEADLINE",
}

ALLREDUCE = """
import os, sys
import torch
import torch.distributed as dist

dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
value = torch.tensor([float(rank + 1)])
dist.all_reduce(value)
with open(os.path.join(sys.argv[1], f"rank{rank}.txt"), "w") as f:
    node = os.environ["SLURMD_NODENAME"]
    f.write(f"{rank} {world} {value.item()} {node} {os.getcwd()} {sys.executable}\\n")
dist.destroy_process_group()
"""

# Stands in for the trainer's preemption path: wait for SIGTERM, "save", exit; when a checkpoint
# exists (the requeued run), "resume" from it and finish.
PREEMPTIBLE = """
import os, signal, sys, time
from pathlib import Path
import torch.distributed as dist

out, rank = Path(sys.argv[1]), int(os.environ["RANK"])
stop = []
signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
dist.init_process_group("gloo")
ckpt = out / f"ckpt{rank}"
if ckpt.exists():
    (out / f"resumed{rank}").write_text(ckpt.read_text() + " resumed@" + os.environ["SLURM_RESTART_COUNT"])
    sys.exit(0)
(out / f"running{rank}").write_text("")
while not stop:
    time.sleep(0.2)
ckpt.write_text("saved@" + os.environ.get("SLURM_RESTART_COUNT", "0"))
"""


@pytest.fixture(autouse=True)
def _stdin_devnull(monkeypatch):
    """nemo-run runs sbatch through invoke, which forwards stdin; pytest's stdin refuses reads."""
    with open("/dev/null") as devnull:
        monkeypatch.setattr(sys, "stdin", devnull)
        yield


def _tiny_config(tmp_path: Path, port: int, venv: Path, *sets: str) -> LaunchConfig:
    return load_launch_config(
        REPO / "examples/tiny_cpu/launch_slurm.yaml",
        sets=[
            f"slurm.tunnel.job_dir={tmp_path / 'jobs'}",
            f"rdzv_port={port}",
            f"python_env={venv}",
            f"code_dir={REPO}",
            *sets,
        ],
    )


def _script(tmp_path: Path, name: str, body: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


def _job(job_id: str) -> dict[str, str]:
    out = subprocess.run(
        ["scontrol", "-o", "show", "job", job_id], capture_output=True, text=True, check=True
    ).stdout
    return dict(re.findall(r"(\w+)=(\S*)", out))


def _logs(result: Submission) -> str:
    return "\n".join(
        f"--- {p}\n{p.read_text()[-3000:]}" for p in sorted(Path(result.experiment_dir).rglob("*.out"))
    )


def _wait(result: Submission, until, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not until():
        assert time.monotonic() < deadline, (
            f"job {result.job_id} timed out: {_job(result.job_id)}\n{_logs(result)}"
        )
        time.sleep(0.5)


def _wait_finished(result: Submission, timeout: float = 150) -> dict[str, str]:
    _wait(result, lambda: _job(result.job_id)["JobState"] in TERMINAL, timeout)
    return _job(result.job_id)


def test_two_node_torchrun_rendezvous(slurm_cluster, tmp_path, free_port, train_venv):
    """(c0) launcher -> sbatch -> srun on n1 and n2 -> torchrun c10d rendezvous -> gloo all_reduce."""
    cfg = _tiny_config(tmp_path, free_port, train_venv)
    script = _script(tmp_path, "allreduce.py", ALLREDUCE)
    result = submit(cfg, rank_task(cfg, [str(script), str(tmp_path)]))
    job = _wait_finished(result)
    assert (job["JobState"], job["ExitCode"], job["NumNodes"]) == ("COMPLETED", "0:0", "2"), _logs(result)
    lines = sorted((tmp_path / f"rank{r}.txt").read_text().split() for r in (0, 1))
    assert [line[:3] for line in lines] == [["0", "2", "3.0"], ["1", "2", "3.0"]]  # 1 + 2 on every rank
    assert {line[3] for line in lines} == {"n1", "n2"}  # one rank on each node
    assert all(line[4] == str(REPO) for line in lines)  # ranks start in code_dir
    assert all(line[5].startswith(str(train_venv)) for line in lines)  # python from the training venv


def test_sigterm_saves_requeues_and_resumes(slurm_cluster, tmp_path, free_port, train_venv):
    """Preemption path: SIGTERM to the job's steps (what --signal=TERM@N sends before the time
    limit) -> ranks save and exit -> the batch script requeues -> the new run resumes."""
    cfg = _tiny_config(tmp_path, free_port, train_venv)
    script = _script(tmp_path, "preemptible.py", PREEMPTIBLE)
    result = submit(cfg, rank_task(cfg, [str(script), str(tmp_path)]))
    _wait(result, lambda: all((tmp_path / f"running{r}").exists() for r in (0, 1)), 90)
    subprocess.run(["scancel", "--signal=TERM", result.job_id], check=True)
    job = _wait_finished(result)
    assert (job["JobState"], job["Restarts"]) == ("COMPLETED", "1"), _logs(result)
    assert [(tmp_path / f"resumed{r}").read_text() for r in (0, 1)] == ["saved@0 resumed@1"] * 2


TINY_RUN = """
model: {{hf_path: {model}}}
data: {{math: [{data}/math.jsonl], code: [{data}/code.jsonl], prompts_per_step: 2, math_instruction: "", code_instruction: ""}}
stages:
  - {{name: stage1_math, mixture: {{math: 1.0}}, steps: 1}}
  - {{name: stage2_math_code, mixture: {{math: 0.5, code: 0.5}}, steps: 1}}
rollout: {{n_samples_per_prompt: 2, max_response_tokens: 8, max_model_len: 128,
          cpu_kvcache_space_gib: 0.25, dtype: float32, enforce_eager: true}}
reward: {{math_workers: 1, code_workers: 1}}
training: {{run_dir: {run}, steps: 2, micro_batch_size: 2}}
"""


def _tiny_run_config(tmp_path: Path, train_venv: Path) -> Path:
    """A 2-step two-stage run on a freshly built tiny model (built with the training venv)."""
    model, data = tmp_path / "model", tmp_path / "data"
    subprocess.run([str(train_venv / "bin/python"), str(REPO / "tools/make_tiny_model.py"), "--out", str(model)],
                   check=True, capture_output=True)
    data.mkdir()
    (data / "math.jsonl").write_text("".join(
        json.dumps({"id": f"m{i}", "prompt": f"What is {i} + 1?", "answer": str(i + 1)}) + "\n" for i in range(4)))
    tests = {"fn_name": "add", "inputs": [[1, 2]], "outputs": [3]}
    (data / "code.jsonl").write_text("".join(
        json.dumps({"id": f"c{i}", "prompt": "Write add(a, b).", "tests": tests}) + "\n" for i in range(2)))
    path = tmp_path / "train.yaml"
    path.write_text(TINY_RUN.format(model=model, data=data, run=tmp_path / "run"))
    return path


def test_tiny_training_job_writes_checkpoint(slurm_cluster, tmp_path, free_port, train_venv):
    """(c) the real trainer on 2 nodes x 1 rank, submitted exactly as the CLI does."""
    train_config = _tiny_run_config(tmp_path, train_venv)
    cfg = _tiny_config(tmp_path, free_port, train_venv, f"train_config={train_config}")
    result = submit(cfg, trainer_task(cfg))
    job = _wait_finished(result, timeout=600)
    assert (job["JobState"], job["ExitCode"]) == ("COMPLETED", "0:0"), _logs(result)
    logs = "".join(p.read_text() for p in Path(result.experiment_dir).rglob("*.out"))
    assert "srpo rank 0/2" in logs and "srpo rank 1/2" in logs, _logs(result)  # both ranks ran and logged
    metrics = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2]
    assert (tmp_path / "run/checkpoints/step_000002/COMPLETE").exists(), _logs(result)
