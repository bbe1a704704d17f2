"""Where we run: CUDA (NCCL, megatron's CUDA RNG tracker) or CPU (gloo plus a compatibility layer).

This is the only module that decides which device the job is on. Everything else asks
`device()` or receives the `DistributedContext` returned by `init_distributed`.

The CPU compatibility layer exists so the *same* megatron-core code paths (schedules, DDP,
optimizer, tensor-parallel layers) run on GPU-less machines for tests and demos. `CpuCompat` is
a context: `init_distributed` enters it when CUDA is unavailable and `destroy_distributed` leaves
it, restoring every name it patched. While active it does four things:
1. `torch.cuda.current_device()` returns "cpu", so megatron's `device=torch.cuda.current_device()`
   allocations land on the CPU;
2. a `TorchFunctionMode` remaps the remaining hard-coded `device="cuda"` allocations and
   `.cuda()` / `.to("cuda")` moves to the CPU;
3. megatron's RNG tracker is replaced by one that forks the CPU generator;
4. gradient clipping uses a CPU-safe copy of megatron's `clip_grad_by_total_norm_fp32` (megatron
   asserts that gradients are CUDA tensors).
"""

from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


def cuda_available() -> bool:
    return torch.cuda.is_available()


def device() -> torch.device:
    """The device this process computes on."""
    if cuda_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


@dataclass(frozen=True)
class DistributedContext:
    """Ranks and sizes of this process, as megatron's parallel state sees them."""

    rank: int
    world_size: int
    local_rank: int
    tensor_parallel: int
    pipeline_parallel: int
    data_parallel: int
    tp_rank: int
    pp_rank: int
    dp_rank: int
    backend: str

    @property
    def is_first_pp_stage(self) -> bool:
        return self.pp_rank == 0

    @property
    def is_last_pp_stage(self) -> bool:
        return self.pp_rank == self.pipeline_parallel - 1


def init_distributed(
    tensor_parallel: int = 1,
    pipeline_parallel: int = 1,
    seed: int = 1234,
    timeout_minutes: int = 30,
) -> DistributedContext:
    """Initialise torch.distributed from torchrun's environment and megatron's parallel state.

    Works without torchrun too (a single process, world size 1). Idempotent for the same sizes.
    """
    from megatron.core import parallel_state, tensor_parallel as mcore_tp

    rank = int(os.environ.get("RANK", "0"))
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    model_parallel = tensor_parallel * pipeline_parallel
    if world_size % model_parallel != 0:
        raise ValueError(
            f"world size {world_size} is not divisible by tensor_parallel x pipeline_parallel "
            f"= {tensor_parallel} x {pipeline_parallel}; launch a multiple of {model_parallel} ranks"
        )
    backend = "nccl" if cuda_available() else "gloo"
    if cuda_available():
        torch.cuda.set_device(local_rank)
    elif active_cpu_compat() is None:
        CpuCompat().__enter__()  # left by destroy_distributed
    if not dist.is_initialized():
        timeout = datetime.timedelta(minutes=timeout_minutes)
        if world_size == 1 and "MASTER_PORT" not in os.environ:
            # a lone process (CLI tools, tests) needs no rendezvous and so no port
            dist.init_process_group(backend=backend, store=dist.HashStore(), rank=0, world_size=1,
                                    timeout=timeout)
        else:
            os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
            dist.init_process_group(backend=backend, rank=rank, world_size=world_size, timeout=timeout)
    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel(
            tensor_model_parallel_size=tensor_parallel,
            pipeline_model_parallel_size=pipeline_parallel,
        )
    torch.manual_seed(seed)
    mcore_tp.model_parallel_cuda_manual_seed(seed)
    return DistributedContext(
        rank=rank,
        world_size=world_size,
        local_rank=local_rank,
        tensor_parallel=tensor_parallel,
        pipeline_parallel=pipeline_parallel,
        data_parallel=world_size // model_parallel,
        tp_rank=parallel_state.get_tensor_model_parallel_rank(),
        pp_rank=parallel_state.get_pipeline_model_parallel_rank(),
        dp_rank=parallel_state.get_data_parallel_rank(),
        backend=backend,
    )


def destroy_distributed() -> None:
    """Undo `init_distributed`: megatron's parallel state, the process group, the CPU layer."""
    from megatron.core import parallel_state

    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()
    compat = active_cpu_compat()
    if compat is not None:
        compat.__exit__(None, None, None)


# ----------------------------------------------------------------------------------------------
# CPU compatibility layer
# ----------------------------------------------------------------------------------------------

_TENSOR_FACTORIES = frozenset({
    torch.empty, torch.zeros, torch.ones, torch.full, torch.arange, torch.tensor, torch.rand,
    torch.randn, torch.randint, torch.empty_like, torch.zeros_like, torch.ones_like,
    torch.full_like, torch.as_tensor, torch.linspace, torch.eye, torch.empty_strided,
})


def _is_cuda(device_arg) -> bool:
    if isinstance(device_arg, torch.device):
        return device_arg.type == "cuda"
    if isinstance(device_arg, str):
        return device_arg.startswith("cuda")
    return isinstance(device_arg, int) and not isinstance(device_arg, bool)


class _CudaToCpuMode(torch.overrides.TorchFunctionMode):
    """Redirects CUDA allocations and moves to the CPU (megatron hard-codes "cuda" in places)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func in _TENSOR_FACTORIES and _is_cuda(kwargs.get("device")):
            kwargs["device"] = "cpu"
        elif func is torch.Tensor.cuda:
            return args[0]
        elif func is torch.Tensor.to:
            if _is_cuda(kwargs.get("device")):
                kwargs["device"] = "cpu"
            args = tuple("cpu" if i > 0 and _is_cuda(a) else a for i, a in enumerate(args))
        return func(*args, **kwargs)


def _make_cpu_rng_tracker():
    from megatron.core.tensor_parallel import random as mcore_random

    class CpuRNGStatesTracker(mcore_random.CudaRNGStatesTracker):
        """megatron's tracker API (named, forkable RNG states) over the CPU default generator."""

        def add(self, name, seed):
            if seed in self.seeds_:
                raise Exception(f"seed {seed} already exists")
            self.seeds_.add(seed)
            if name in self.states_:
                raise Exception(f"rng state {name} already exists")
            original = torch.get_rng_state()
            torch.manual_seed(seed)
            self.states_[name] = torch.get_rng_state()
            torch.set_rng_state(original)

        @contextlib.contextmanager
        def fork(self, name=mcore_random._MODEL_PARALLEL_RNG_TRACKER_NAME):
            if name not in self.states_:
                raise Exception(f"rng state {name} is not added")
            original = torch.get_rng_state()
            torch.set_rng_state(self.states_[name])
            try:
                yield
            finally:
                self.states_[name] = torch.get_rng_state()
                torch.set_rng_state(original)

    return CpuRNGStatesTracker


def _cpu_clip_grad_by_total_norm_fp32(parameters, max_norm, total_norm, use_decoupled_grad=False):
    """megatron's clip_grad_by_total_norm_fp32 without its CUDA-tensor assertion."""
    if isinstance(parameters, torch.Tensor):
        parameters = [parameters]
    attr = "decoupled_grad" if use_decoupled_grad else "grad"
    grads = [getattr(p, attr).detach() for p in parameters if getattr(p, attr, None) is not None]
    clip_coeff = max_norm / (total_norm + 1.0e-6)
    if clip_coeff < 1.0 and grads:
        torch._foreach_mul_(grads, clip_coeff)


class CpuCompat:
    """The CPU compatibility layer (see the module docstring) as a context: entering patches
    torch and megatron, leaving restores every patched name and leaves the device mode.

    Its state hangs on what it patched: while active, `torch.cuda.current_device` is this
    object's bound method, which is how `active_cpu_compat` finds it (no module-level flag).
    Entered and left once; other torch function modes entered meanwhile must be left first.
    """

    def __init__(self) -> None:
        self._saved: list[tuple[object, str, object]] = []
        self._mode = _CudaToCpuMode()

    def current_device(self) -> str:
        return "cpu"  # megatron's `device=torch.cuda.current_device()` allocations land on the CPU

    def _patches(self) -> list[tuple[object, str, object]]:
        from megatron.core.optimizer import clip_grads, optimizer
        from megatron.core.tensor_parallel import random as mcore_random

        return [
            (torch.cuda, "current_device", self.current_device),
            (torch.cuda, "synchronize", _no_op),
            (mcore_random, "_CUDA_RNG_STATE_TRACKER", _make_cpu_rng_tracker()()),
            (mcore_random, "_CUDA_RNG_STATE_TRACKER_INITIALIZED", True),
            (mcore_random, "initialize_rng_tracker", _no_op),
            (clip_grads, "clip_grad_by_total_norm_fp32", _cpu_clip_grad_by_total_norm_fp32),
            (optimizer, "clip_grad_by_total_norm_fp32", _cpu_clip_grad_by_total_norm_fp32),
        ]

    def __enter__(self) -> CpuCompat:
        if cuda_available():
            raise RuntimeError("CpuCompat is for machines without CUDA; on CUDA megatron runs as it is")
        if self._saved:
            raise RuntimeError("this CpuCompat is already active; enter a layer once")
        for owner, name, value in self._patches():
            self._saved.append((owner, name, getattr(owner, name)))
            setattr(owner, name, value)
        self._mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._mode.__exit__(None, None, None)
        for owner, name, original in reversed(self._saved):
            setattr(owner, name, original)
        self._saved.clear()


def active_cpu_compat() -> CpuCompat | None:
    """The CPU layer now in force, if any."""
    owner = getattr(torch.cuda.current_device, "__self__", None)
    return owner if isinstance(owner, CpuCompat) else None


def _no_op(*args, **kwargs) -> None:
    return None


# ----------------------------------------------------------------------------------------------
# Spawning ranks without torchrun (CLI tools and tests)
# ----------------------------------------------------------------------------------------------

def free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawned_entry(local_rank: int, world_size: int, port: int, fn, args) -> None:
    os.environ.update({
        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(local_rank),
        "LOCAL_RANK": str(local_rank), "WORLD_SIZE": str(world_size),
        "LOCAL_WORLD_SIZE": str(world_size),
    })
    try:
        fn(*args)
    finally:
        destroy_distributed()


def spawn(fn, world_size: int, *args) -> None:
    """Run fn(*args) in `world_size` fresh processes with torchrun's environment variables set.

    fn must be importable (a module-level function); it calls `init_distributed` itself.
    Raises if any rank fails.
    """
    import torch.multiprocessing as mp

    threads = str(max(1, (os.cpu_count() or 1) // world_size))
    previous = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = threads  # ranks share the host's cores
    try:
        mp.start_processes(_spawned_entry, args=(world_size, free_port(), fn, args),
                           nprocs=world_size, join=True, start_method="spawn")
    finally:
        if previous is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = previous
