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
    platform.enable_cpu_compat()
    assert platform.device() == torch.device("cpu")
    assert torch.zeros(2, device="cuda").device.type == "cpu"
    assert torch.empty(3, device=torch.cuda.current_device()).device.type == "cpu"
    assert torch.ones(1).cuda().device.type == "cpu" and torch.ones(1).to("cuda").device.type == "cpu"


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
