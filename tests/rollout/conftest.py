"""Rollout-test fixtures: two tiny Qwen2 checkpoints with identical shapes, different weights."""

from __future__ import annotations

from pathlib import Path

import pytest

from tools.make_tiny_model import make_tiny_model


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The policy the rollout engine is built from (seed 0)."""
    return make_tiny_model(tmp_path_factory.mktemp("rollout_tiny_seed0"), seed=0)


@pytest.fixture(scope="session")
def other_tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Same architecture and tokenizer, other weights (seed 1): the weight-swap target."""
    return make_tiny_model(tmp_path_factory.mktemp("rollout_tiny_seed1"), seed=1)
