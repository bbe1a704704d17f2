"""Launcher test fixtures: a real 2-node Slurm cluster on this machine, started once per session.

Run in the launcher virtualenv: `.venv-launch/bin/python -m pytest tests/launch`. The jobs these
tests submit run torchrun from the training virtualenv (.venv), named through the launch config.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

from tools.slurm import cluster

REPO = Path(__file__).resolve().parents[2]
TRAIN_VENV = REPO / ".venv"


def pytest_configure(config):
    # nemo-run reads NEMORUN_HOME once, at import, and records every experiment under it:
    # keep the tests' experiments out of ~/.nemo_run.
    if "NEMORUN_HOME" not in os.environ:
        home = tempfile.mkdtemp(prefix="nemorun-home-")
        os.environ["NEMORUN_HOME"] = home
        config._srpo_nemorun_home = home


def pytest_unconfigure(config):
    home = getattr(config, "_srpo_nemorun_home", None)
    if home:
        shutil.rmtree(home, ignore_errors=True)
        del os.environ["NEMORUN_HOME"]


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A started local Slurm (n1, n2 on 127.0.0.1), with SLURM_CONF pointing clients at it."""
    if os.geteuid() != 0:
        pytest.skip("local Slurm needs root (its daemons run as root); run the launcher tests as root")
    if not cluster.slurm_installed():
        install = subprocess.run(
            ["bash", str(REPO / "tools/slurm/install.sh")], capture_output=True, text=True, timeout=900
        )
        if install.returncode != 0 or not cluster.slurm_installed():
            pytest.skip(
                f"Slurm is not installed and tools/slurm/install.sh failed:\n{install.stderr[-2000:]}"
            )
    started = cluster.start(tmp_path_factory.mktemp("slurm"))
    previous = os.environ.get("SLURM_CONF")
    os.environ.update(started.env)
    yield started
    cluster.stop(started.root)
    if previous is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = previous


@pytest.fixture
def free_port() -> int:
    """A TCP port free right now, for torchrun's rendezvous store (both "nodes" share this host)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def train_venv() -> Path:
    """The training virtualenv the jobs' torchrun comes from (a missing one fails, not skips)."""
    if not (TRAIN_VENV / "bin" / "torchrun").exists():
        pytest.fail(f"no training virtualenv with torchrun at {TRAIN_VENV}; create it first (README)")
    return TRAIN_VENV


@pytest.fixture(scope="session")
def stand_in_model(tmp_path_factory) -> Path:
    """An HF model directory with just a config.json (4 heads, 2 KV heads, 2 layers): all that
    validating a trainer config reads of the model."""
    path = tmp_path_factory.mktemp("stand-in-model")
    config = {"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "hidden_size": 64,
              "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2,
              "num_hidden_layers": 2, "vocab_size": 1001, "max_position_embeddings": 256}
    (path / "config.json").write_text(json.dumps(config))
    return path
