"""The launcher validates the trainer config with the trainer's own code before writing anything."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _launch(job_dir: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "srpo_megatron.launch", "--dryrun", "--set", f"slurm.tunnel.job_dir={job_dir}", *args],
        cwd=REPO,
        env=os.environ | (env or {}),
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--set", "train_config=examples/tiny_cpu/missing.yaml"],
         r"train_config: 'examples/tiny_cpu/missing.yaml' does not exist"),
        (["optimizer.lrr=1e-6"], r"optimizer.lrr: unknown field; valid fields: lr, "),
        (["optimizer.lr=-1"], r"optimizer.lr must be > 0 \(got -1.0\)"),
        (["model.tensor_parallel=3"], r"tensor_parallel=3 does not divide num_attention_heads=4"),
    ],
)
def test_bad_trainer_config_writes_nothing(tmp_path, train_venv, stand_in_model, args, expected):
    job_dir = tmp_path / "jobs"
    proc = _launch(job_dir, "--config", "examples/tiny_cpu/launch_slurm.yaml", "--set", f"python_env={train_venv}",
                   *args, env={"SRPO_TINY_MODEL": str(stand_in_model)})
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert re.search(expected, proc.stderr), proc.stderr
    assert "Traceback" not in proc.stderr
    assert not job_dir.exists()  # no sbatch script, no experiment: was written and "succeeded" before


def test_good_trainer_config_passes_the_check(tmp_path, train_venv, stand_in_model):
    proc = _launch(tmp_path / "jobs", "--config", "examples/tiny_cpu/launch_slurm.yaml",
                   "--set", f"python_env={train_venv}", "optimizer.lr=2e-5",
                   env={"SRPO_TINY_MODEL": str(stand_in_model)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert next((tmp_path / "jobs").glob("experiments/*/*/train_sbatch.sh")).is_file()


def test_unreachable_training_environment_needs_an_explicit_opt_out(tmp_path):
    """The 32B example runs in a container: nothing here can check its config."""
    env = {"SLURM_ACCOUNT": "a", "SLURM_HOST": "login", "SLURM_USER": "u", "SLURM_JOB_DIR": "/lustre/jobs"}
    proc = _launch(tmp_path / "jobs", "--config", "examples/qwen2.5-32b/launch.yaml", env=env)
    assert proc.returncode == 2
    assert "cannot validate train_config 'examples/qwen2.5-32b/train.yaml' here" in proc.stderr
    assert "--train-python" in proc.stderr and "--no-train-check" in proc.stderr
