"""The platform layer: torchrun environment checks and the CPU compatibility layer."""

import pytest
import torch

from srpo_megatron import platform

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU layer is inactive with CUDA")


def test_world_size_must_be_a_multiple_of_model_parallel(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(ValueError, match=r"world size 3 is not divisible by tensor_parallel x pipeline_parallel = 2 x 1"):
        platform.init_distributed(tensor_parallel=2)


def test_cuda_allocations_land_on_cpu():
    with platform.CpuCompat():
        assert platform.device() == torch.device("cpu")
        assert torch.zeros(2, device="cuda").device.type == "cpu"
        assert torch.empty(3, device=torch.cuda.current_device()).device.type == "cpu"
        assert torch.ones(1).cuda().device.type == "cpu" and torch.ones(1).to("cuda").device.type == "cpu"
    with pytest.raises((RuntimeError, AssertionError)):  # the device mode is gone with the layer
        torch.zeros(1, device="cuda")


def _patched_names():
    from megatron.core.optimizer import clip_grads, optimizer
    from megatron.core.tensor_parallel import random as mcore_random

    names = [(torch.cuda, "current_device"), (torch.cuda, "synchronize"),
             (mcore_random, "_CUDA_RNG_STATE_TRACKER"), (mcore_random, "_CUDA_RNG_STATE_TRACKER_INITIALIZED"),
             (mcore_random, "initialize_rng_tracker"), (clip_grads, "clip_grad_by_total_norm_fp32"),
             (optimizer, "clip_grad_by_total_norm_fp32")]
    return {f"{owner.__name__}.{name}": getattr(owner, name) for owner, name in names}


def test_destroy_distributed_restores_every_patched_name(monkeypatch):
    monkeypatch.delenv("MASTER_PORT", raising=False)
    monkeypatch.setenv("WORLD_SIZE", "1")
    before = _patched_names()
    platform.init_distributed(1, 1, seed=0)
    try:
        during = _patched_names()
        assert torch.cuda.current_device() == "cpu" and platform.active_cpu_compat() is not None
        assert all(during[name] is not before[name] for name in before), "a name was left unpatched"
        assert torch.zeros(1, device="cuda").device.type == "cpu"
    finally:
        platform.destroy_distributed()
    after = _patched_names()
    changed = [name for name in before if after[name] is not before[name]]
    assert not changed, changed
    assert platform.active_cpu_compat() is None
    with pytest.raises((RuntimeError, AssertionError)):  # no TorchFunctionMode left behind
        torch.zeros(1, device="cuda")


def test_cpu_rng_tracker_forks_without_disturbing_the_default_stream():
    tracker = platform._make_cpu_rng_tracker()()
    tracker.add("model-parallel", 123)
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    with tracker.fork("model-parallel"):
        first = torch.rand(3)
    with tracker.fork("model-parallel"):
        second = torch.rand(3)
    assert torch.equal(torch.rand(3), expected)  # the default stream is untouched
    assert not torch.equal(first, second)  # the forked stream advances
    torch.manual_seed(123)
    assert torch.equal(torch.rand(3), first)  # and starts from its own seed
    with pytest.raises(Exception, match="already exists"):
        tracker.add("model-parallel", 7)
