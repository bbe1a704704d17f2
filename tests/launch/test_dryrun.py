"""Dry runs: the sbatch script nemo-run generates for the example launch configs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip(
    "nemo_run", reason="launcher tests run in .venv-launch: .venv-launch/bin/python -m pytest tests/launch"
)

from srpo_megatron.launch.config import LaunchConfigError, load_launch_config  # noqa: E402
from srpo_megatron.launch.executors import build_executor  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
CLUSTER_ENV = {
    "SLURM_ACCOUNT": "rl_team",
    "SLURM_HOST": "login.example.org",
    "SLURM_USER": "alice",
    "SLURM_JOB_DIR": "/lustre/alice/nemo-jobs",
    "SRPO_IMAGE": "nvcr.io/acme/srpo-megatron:25.04",
    "SRPO_CODE": "/lustre/alice/srpo-megatron",
}


def _dryrun(config: str, *extra: str, env: dict[str, str] | None = None) -> tuple[str, str]:
    """Run the CLI's --dryrun; return (sbatch script, the rank script it runs)."""
    proc = subprocess.run(
        [sys.executable, "-m", "srpo_megatron.launch", "--config", config, "--dryrun", *extra],
        cwd=REPO,
        env=os.environ | (env or {}),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    sbatch = Path(proc.stdout.strip().splitlines()[-1])
    assert sbatch.name.endswith("_sbatch.sh") and sbatch.is_file(), proc.stdout
    text = sbatch.read_text()
    rank_script = re.search(r"--no-python (\S+)", text).group(1)
    # The script runs on the cluster as /nemo_run/scripts/...; locally it sits in the task dir.
    local = sbatch.parent / "train" / "scripts" / Path(rank_script).name
    return text, local.read_text()


def test_qwen32b_dryrun_4_nodes_x_8_gpus():
    sbatch, rank = _dryrun(
        "examples/qwen2.5-32b/launch.yaml",
        *("--set", "slurm.time=02:00:00", "--no-train-check", "optimizer.lr=2e-6"),  # the job's paths are the cluster's
        env=CLUSTER_ENV,
    )
    for line in (
        "#SBATCH --nodes=4",
        "#SBATCH --gpus-per-node=8",
        "#SBATCH --ntasks-per-node=1",  # one torchrun per node, which starts 8 ranks
        "#SBATCH --account=rl_team",
        "#SBATCH --partition=batch",
        "#SBATCH --time=02:00:00",
        "#SBATCH --exclusive",
        "#SBATCH --requeue",
        "#SBATCH --signal=TERM@300",
        "export TORCH_ELASTIC_SHUTDOWN_TIMEOUT=300",
        "export TORCHX_MAX_RETRIES=5",
    ):
        assert line in sbatch.splitlines(), f"{line!r} missing from:\n{sbatch}"
    assert "--container-image nvcr.io/acme/srpo-megatron:25.04" in sbatch
    assert "/lustre/alice/srpo-megatron:/workspace/srpo-megatron" in sbatch
    assert "--output /lustre/alice/nemo-jobs/srpo-qwen2.5-32b/" in sbatch  # logs on the cluster, via SSH
    torchrun = re.search(r"torchrun .*", sbatch).group(0)
    for flag in (
        "--rdzv-backend c10d",
        "--rdzv-endpoint $head_node_ip:29500",
        "--nnodes 4",
        "--nproc-per-node 8",
        "--node-rank $SLURM_NODEID",
    ):
        assert flag in torchrun, torchrun
    assert rank.strip().endswith(
        "cd /workspace/srpo-megatron && exec python -m srpo_megatron.train "
        "--config examples/qwen2.5-32b/train.yaml optimizer.lr=2e-6 --resume auto"
    ), rank


def test_qwen7b_dryrun_1_node_x_8_gpus():
    sbatch, rank = _dryrun("examples/qwen2.5-7b/launch.yaml", "--no-train-check", env=CLUSTER_ENV)
    assert "#SBATCH --nodes=1" in sbatch and "#SBATCH --gpus-per-node=8" in sbatch
    assert re.search(r"torchrun .*--nnodes 1 --nproc-per-node 8", sbatch)
    assert "--config examples/qwen2.5-7b/train.yaml --resume auto" in rank


def test_tiny_slurm_script_is_accepted_by_real_slurm(slurm_cluster, tmp_path, train_venv, stand_in_model):
    """sbatch --test-only asks the local slurmctld to validate the script without running it."""
    sbatch, rank = _dryrun(
        "examples/tiny_cpu/launch_slurm.yaml",
        "--set",
        f"slurm.tunnel.job_dir={tmp_path}",
        "--set",
        f"python_env={train_venv}",
        env={"SRPO_TINY_MODEL": str(stand_in_model)},
    )
    assert "#SBATCH --nodes=2" in sbatch and "gpus-per-node" not in sbatch
    assert f"export PATH={train_venv}/bin:$PATH" in sbatch
    assert f"cd {REPO} && exec python -m srpo_megatron.train --config examples/tiny_cpu/config.yaml" in rank
    script = next(tmp_path.glob("experiments/*/*/train_sbatch.sh"))
    check = subprocess.run(["sbatch", "--test-only", str(script)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0 and "to start at" in check.stderr, check.stderr


def test_unknown_sbatch_flag_names_the_field(tmp_path):
    path = tmp_path / "launch.yaml"
    path.write_text(
        "name: t\ntrain_config: c.yaml\nslurm:\n  account: a\n  sbatch_extra:\n    gpu_type: h100\n"
    )
    with pytest.raises(LaunchConfigError, match=r"slurm\.sbatch_extra\.gpu_type: not an sbatch flag"):
        build_executor(load_launch_config(path))


@pytest.mark.skipif(
    subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True).returncode != 0,
    reason="the git packager archives HEAD; this checkout has no commit yet",
)
def test_git_packager_ships_the_commit(tmp_path, stand_in_model):
    sbatch, rank = _dryrun(
        "examples/tiny_cpu/launch_slurm.yaml",
        *("--set", "packager=git", "--set", "code_dir=null", "--set", f"slurm.tunnel.job_dir={tmp_path}"),
        env={"SRPO_TINY_MODEL": str(stand_in_model)},
    )
    code = next(tmp_path.glob("experiments/*/*/train/code"))
    assert (code / "srpo_megatron" / "__init__.py").is_file()  # git archive of HEAD
    assert f"--chdir {code}" in sbatch  # ranks start in the shipped copy...
    assert rank.strip().endswith(
        "exec python -m srpo_megatron.train --config examples/tiny_cpu/config.yaml --resume auto"
    )
    assert "cd " not in rank  # ...so no cd into code_dir
