"""Shared fixtures for the reward tests: one warm grading pool and one sandbox with short limits."""

from __future__ import annotations

import pytest

from srpo_megatron.rewards.math import GradingPool
from srpo_megatron.rewards.sandbox import Sandbox, SandboxConfig


@pytest.fixture(scope="session")
def grading_pool():
    """Two workers (this machine has two cores); a generous default timeout so that only the
    deliberately hanging inputs time out on a loaded machine (those pass a short timeout)."""
    with GradingPool(workers=2, timeout_s=10.0) as pool:
        yield pool


@pytest.fixture(scope="session")
def sandbox() -> Sandbox:
    """Short limits keep the hostile-program suite fast."""
    return Sandbox(SandboxConfig(timeout_s=1.0, memory_mb=512, max_output_bytes=1 << 16))
