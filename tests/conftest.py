"""Shared fixtures: tiny HF models built offline (see tools/make_tiny_model.py)."""

from __future__ import annotations

import os

import pytest

from tools.make_tiny_model import make_tiny_model

os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")


@pytest.fixture(scope="session")
def tiny_qwen(tmp_path_factory):
    """Untied Qwen2 with GQA, QKV biases and a vocabulary that 2 does not divide."""
    return make_tiny_model(tmp_path_factory.mktemp("tiny-qwen"), vocab_size=1001, seed=1)


@pytest.fixture(scope="session")
def tiny_qwen_tied(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("tiny-qwen-tied"), vocab_size=1001, tied=True, seed=2)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("tiny-llama"), arch="llama", seed=3)


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` run only where CUDA is present (the TE / NCCL / vLLM-CUDA paths)."""
    try:
        import torch  # absent in the launcher's virtualenv, which has no GPU tests
    except ImportError:
        torch = None
    if torch is not None and torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
