"""`executor: local`: the tiny launch config runs torchrun with 2 ranks on this machine."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip(
    "nemo_run", reason="launcher tests run in .venv-launch: .venv-launch/bin/python -m pytest tests/launch"
)

from srpo_megatron.launch.config import load_launch_config  # noqa: E402
from srpo_megatron.launch.submit import rank_task, submit  # noqa: E402

REPO = Path(__file__).resolve().parents[2]

RANK = """
import os, sys
import torch
import torch.distributed as dist

dist.init_process_group("gloo")
value = torch.tensor([1.0])
dist.all_reduce(value)
with open(os.path.join(sys.argv[1], f"rank{dist.get_rank()}.txt"), "w") as f:
    f.write(f"{dist.get_world_size()} {value.item()} {os.getcwd()} {sys.executable}\\n")
dist.destroy_process_group()
"""


def test_local_executor_runs_two_ranks(tmp_path, train_venv):
    cfg = load_launch_config(REPO / "examples/tiny_cpu/launch_local.yaml", sets=[f"python_env={train_venv}"])
    script = tmp_path / "rank.py"
    script.write_text(RANK)
    result = submit(cfg, rank_task(cfg, [str(script), str(tmp_path)]))
    assert result.final_state == "SUCCEEDED", result
    for rank in (0, 1):
        world, total, cwd, python = (tmp_path / f"rank{rank}.txt").read_text().split()
        assert (world, total, cwd) == ("2", "2.0", str(REPO))
        assert python.startswith(str(train_venv))


def test_local_executor_reports_failure(tmp_path, train_venv):
    cfg = load_launch_config(REPO / "examples/tiny_cpu/launch_local.yaml", sets=[f"python_env={train_venv}"])
    script = tmp_path / "fail.py"
    script.write_text("import sys; sys.exit(3)\n")
    assert submit(cfg, rank_task(cfg, [str(script)])).final_state == "FAILED"
