"""Weight sync: the Megatron policy (TP x PP shards) -> the rollout engine (HF layout), every step.

For each parameter, in model order: the owning pipeline stage gathers its TP shards into the full
Megatron tensor (`tp_gather`: NCCL on GPU, shared memory within a CPU host; gathered so that no
copy has to reorder the shards), broadcasts it to the other stages, and every rank converts it
to HF names and layout with `convert.layout` (the same rules the checkpoint converter uses).
Tensors are grouped into buckets of bounded size (whole layers) and streamed to the engine in one
load, so the extra memory a sync needs is about a bucket plus what the engine buffers per module,
never a second copy of the model. The engine loads them with vLLM's in-place reload on GPU and
with `cpu_weight_loader` on CPU.

Every rank ends with the full weights because every rank runs its own in-process engine (on CPU:
rollout data parallelism = world size; on GPU: vLLM's external_launcher, whose loaders slice them
for vLLM's tensor parallelism). vLLM engines in another process are fed the same stream through
vLLM's weight-transfer engines: see `transfer_engine.py`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch
import torch.distributed as dist

from srpo_megatron.convert import layout
from srpo_megatron.models.hf_config import ModelShape
from srpo_megatron.rollout.tp_gather import TensorParallelGather, tensor_parallel_gather


@dataclass
class SyncStats:
    """What the last sync did, for metrics and the benchmark."""

    bytes_moved: int = 0  # bytes handed to the engine (HF tensors)
    buckets: int = 0
    max_bucket_bytes: int = 0


def _owner_stage(rule: layout.ParamRule, layer: int | None, shape: ModelShape, pp: int) -> int:
    if layer is not None:
        return layer // (shape.num_layers // pp)
    return 0 if rule.name.startswith("embedding") else pp - 1


def _local_params(model, shape: ModelShape) -> dict[tuple[str, int | None], torch.nn.Parameter]:
    """This stage's parameters keyed by (canonical rule name, global layer)."""
    offset = layout.layer_offset(model)
    params = {}
    for name, param in model.named_parameters():
        template, layer = layout.canonical_name(name, offset)
        if layout.is_tied_output_copy(name, shape):
            continue  # stage 0 sends the original
        params[(template, layer)] = param
    return params


@torch.no_grad()
def iter_full_hf_weights(model, shape: ModelShape, vocab_size_padded: int,
                         gather: TensorParallelGather | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (hf_name, full tensor) on every rank; a collective over the TP and PP groups.

    `gather`: the TP gather to use; repeated syncs pass the one they keep (default: a new one)."""
    from megatron.core import parallel_state as ps

    gather = gather or tensor_parallel_gather()
    pp_size, pp_rank = ps.get_pipeline_model_parallel_world_size(), ps.get_pipeline_model_parallel_rank()
    params = _local_params(model, shape)
    dtype = next(iter(params.values())).dtype
    device = next(iter(params.values())).device
    for rule, layer in layout.sync_order(shape):
        owner = _owner_stage(rule, layer, shape, pp_size)
        if owner == pp_rank:
            full = layout.gather_full(rule, params[(rule.name, layer)].detach(), gather)
        else:
            full = torch.empty(layout.full_shape(rule, shape, vocab_size_padded), dtype=dtype, device=device)
        if pp_size > 1:
            pp_group = ps.get_pipeline_model_parallel_group()
            full = full.contiguous()
            dist.broadcast(full, src=dist.get_global_rank(pp_group, owner), group=pp_group)
        yield from layout.hf_named(rule, layer, full, shape)


def hf_weight_shapes(shape: ModelShape, vocab_size_padded: int) -> list[tuple[str, tuple[int, ...]]]:
    """(hf_name, shape) of every tensor `iter_full_hf_weights` yields, in the same order, without
    communication: the layout rules applied to meta tensors."""
    shapes = []
    for rule, layer in layout.sync_order(shape):
        full = torch.empty(layout.full_shape(rule, shape, vocab_size_padded), device="meta")
        shapes += [(name, tuple(tensor.shape)) for name, tensor in layout.hf_named(rule, layer, full, shape)]
    return shapes


def _buckets(weights: Iterator[tuple[str, torch.Tensor]], bucket_bytes: int):
    """Group the stream into lists of whole layers of at most ~bucket_bytes each."""
    bucket, size, current_layer = [], 0, None
    for name, tensor in weights:
        layer = name.split(".")[2] if name.startswith("model.layers.") else name
        if bucket and size >= bucket_bytes and layer != current_layer:
            yield bucket, size
            bucket, size = [], 0
        bucket.append((name, tensor))
        size += tensor.numel() * tensor.element_size()
        current_layer = layer
    if bucket:
        yield bucket, size


DEFAULT_BUCKET_BYTES = 32 * 1024**2
"""Default bucket bound: far below any real model (a sync never holds a second copy of the
weights) and not slower than one bucket per model (measured with benchmarks/weight_sync.py)."""


def sync_weights(model, engine, shape: ModelShape, vocab_size_padded: int,
                 bucket_bytes: int = DEFAULT_BUCKET_BYTES, gather: TensorParallelGather | None = None) -> SyncStats:
    """Push the policy's current weights into `engine` (a RolloutEngine). Collective.

    All buckets go through ONE `engine.load_weights` call, as a stream: each vLLM reload call
    walks every module of the model (set-up and fallback for the modules it did not receive),
    so one call per 32 MiB bucket (13 calls) cost 0.1-0.2 s more per sync than one stream on the
    benchmark's 105M model. `bucket_bytes` bounds how much gathered weight exists before vLLM consumes it."""
    stats = SyncStats()

    def stream() -> Iterator[tuple[str, torch.Tensor]]:
        for bucket, size in _buckets(iter_full_hf_weights(model, shape, vocab_size_padded, gather), bucket_bytes):
            stats.bytes_moved += size
            stats.buckets += 1
            stats.max_bucket_bytes = max(stats.max_bucket_bytes, size)
            yield from bucket
            del bucket  # else it stays referenced while the generator gathers the next one

    engine.load_weights(stream())
    return stats
