"""All-gather of tensor-parallel shards for the weight sync: one call per parameter, every step.

GPU: NCCL's all-gather over the TP group. CPU: gloo's TCP all-gather moves about 0.45 GB/s on
this project's 2-core machines, which made it the largest part of a sync. When every rank of
the TP group runs on this host we use vLLM's shared-memory all-gather instead (the collective
vLLM's CPU backend uses for its own tensor parallelism; 3-4x faster than gloo here), and fall
back to gloo across hosts or when the vLLM build has no shared-memory ops.
"""

from __future__ import annotations

import socket
import uuid

import torch
import torch.distributed as dist

from srpo_megatron import platform


class TensorParallelGather:
    """`gather(shard) -> [tp, *shard.shape]`, the shards of all TP ranks in rank order, in `out`
    when given (a contiguous tensor of that shape). Collective."""

    def __init__(self, group: dist.ProcessGroup) -> None:
        self.group = group
        self.size = dist.get_world_size(group)
        self._shm_handle = None
        if self.size > 1 and not platform.cuda_available():
            self._shm_handle = _open_shared_memory(group, self.size)

    @property
    def uses_shared_memory(self) -> bool:
        return self._shm_handle is not None

    def __call__(self, shard: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        if self.size == 1 and out is None:
            return shard.unsqueeze(0)
        shard = shard.contiguous()
        if out is None:
            out = torch.empty((self.size, *shard.shape), dtype=shard.dtype, device=shard.device)
        elif out.shape != (self.size, *shard.shape) or not out.is_contiguous():
            raise ValueError(f"gather: out must be contiguous {(self.size, *shard.shape)}, got {tuple(out.shape)}")
        if self.size == 1:
            out[0].copy_(shard)
            return out
        if self._shm_handle is not None:
            torch.ops._C.shm_all_gather(self._shm_handle, shard.view(-1), out.view(-1))
        else:
            dist.all_gather_into_tensor(out.view(-1), shard.view(-1), group=self.group)
        return out


def tensor_parallel_gather() -> TensorParallelGather:
    """A gather over megatron's current TP group. Build it once and keep it with whoever syncs
    (the trainer): on CPU, building one joins a shared-memory group, a collective."""
    from megatron.core import parallel_state as ps

    return TensorParallelGather(ps.get_tensor_model_parallel_group())


def _open_shared_memory(group: dist.ProcessGroup, size: int) -> int | None:
    """Join a vLLM shared-memory group with the other TP ranks, or None where that cannot work."""
    try:
        import vllm._custom_ops  # noqa: F401  (registers torch.ops._C)
    except ImportError:
        return None
    hosts: list[str | None] = [None] * size
    dist.all_gather_object(hosts, socket.gethostname(), group=group)
    available = torch.tensor([int(hasattr(torch.ops._C, "init_shm_manager") and len(set(hosts)) == 1),
                              torch.get_num_threads()])
    # every rank must take the same path: MIN over (available, threads)
    dist.all_reduce(available, op=dist.ReduceOp.MIN, group=group)
    if not available[0]:
        return None
    name = [f"srpo-tp-{uuid.uuid4().hex[:16]}"]
    dist.broadcast_object_list(name, src=dist.get_global_rank(group, 0), group=group)
    handle = torch.ops._C.init_shm_manager(name[0], size, dist.get_rank(group), int(available[1]))
    dist.barrier(group=group)
    torch.ops._C.join_shm_manager(handle, name[0])
    dist.barrier(group=group)
    return handle
