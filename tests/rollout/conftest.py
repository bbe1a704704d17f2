"""Shared fixtures for the rollout tests: two tiny Qwen2 checkpoints with identical shapes."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# Before anything imports vllm: its logger reads this once.
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The policy the engine is built from (seed 0)."""
    from tools.make_tiny_model import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny_qwen2_seed0"), seed=0)


@pytest.fixture(scope="session")
def other_tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Same architecture and tokenizer, different weights (seed 1): the weight-swap target."""
    from tools.make_tiny_model import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny_qwen2_seed1"), seed=1)
