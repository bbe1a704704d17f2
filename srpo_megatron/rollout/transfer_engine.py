"""vLLM's weight-transfer engines fed from the Megatron policy, for vLLM engines in another process.

The trainer's own engines live in its processes and take tensors directly (`weight_sync.py`). A
vLLM engine in another process (a `vllm serve` with `--weight-transfer-config`, a Ray actor) is
fed by vLLM's trainer-side engines instead:
- `ipc`: the engine shares the trainer's GPUs (colocated); each bucket travels as CUDA IPC
  handles to a packed buffer, no copy through the host;
- `nccl`: the engine runs on other GPUs or nodes (disaggregated); rank 0 broadcasts packed
  buffers over an NCCL group that the engine's workers join.
Both need CUDA. What we supply is the weight stream as vLLM's `WeightSource`: the same
gather -> PP broadcast -> HF layout stream as the in-process sync, with packed buffers of
`bucket_bytes` bounding the extra memory. vLLM drives the engine's control plane through a client:
`HTTPVLLMWeightSyncClient(url)`, `RayVLLMWeightSyncClient(actor)` or a `vllm.LLM`.

Importing this module imports vLLM (several seconds); `weight_sync.py` does not.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

import torch
import torch.distributed as dist
from vllm.distributed.weight_transfer import (
    TrainerWeightTransferEngine,
    VLLMWeightSyncClient,
    WeightTransferTrainerFactory,
)
from vllm.distributed.weight_transfer.base import ParamMeta, WeightSource
from vllm.distributed.weight_transfer.ipc_engine import IPCTrainerInitInfo
from vllm.distributed.weight_transfer.nccl_engine import NCCLTrainerInitInfo

from srpo_megatron.models.hf_config import ModelShape
from srpo_megatron.rollout.tp_gather import tensor_parallel_gather
from srpo_megatron.rollout.weight_sync import DEFAULT_BUCKET_BYTES, hf_weight_shapes, iter_full_hf_weights

Backend = Literal["ipc", "nccl"]


class MegatronWeightSource(WeightSource):
    """The policy's current weights in HF names and layout, as vLLM's `WeightSource`.

    Iterating is a collective over the TP and PP groups (every rank yields every tensor), so all
    trainer ranks iterate together, as vLLM's trainer engines do. `metadata()` needs no
    communication: shapes come from the layout rules.
    """

    def __init__(self, model, shape: ModelShape, vocab_size_padded: int) -> None:
        self._model, self._shape, self._vocab_size_padded = model, shape, vocab_size_padded
        self._gather = tensor_parallel_gather()  # kept: every sync reuses it
        dtype = next(model.parameters()).dtype
        self._metadata = [ParamMeta(name, dtype, hf_shape)
                          for name, hf_shape in hf_weight_shapes(shape, vocab_size_padded)]

    def metadata(self) -> list[ParamMeta]:
        return self._metadata

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        return iter_full_hf_weights(self._model, self._shape, self._vocab_size_padded, self._gather)


def connect_transfer_engine(
    model,
    shape: ModelShape,
    vocab_size_padded: int,
    client: VLLMWeightSyncClient,
    backend: Backend,
    bucket_bytes: int = DEFAULT_BUCKET_BYTES,
    master_address: str | None = None,
    master_port: int | None = None,
    world_size: int | None = None,
) -> TrainerWeightTransferEngine:
    """Rendezvous with the vLLM engine behind `client`; call on every trainer rank.

    Then `engine.send_weights()` after every optimizer step pushes the policy (collective).
    nccl needs the rendezvous address and the transfer group's size (1 trainer sender + the
    engine's workers).
    """
    rank = dist.get_rank() if dist.is_initialized() else 0
    if backend == "ipc":
        init_info = IPCTrainerInitInfo(rank=rank, packed=True, packed_buffer_size_bytes=bucket_bytes)
    elif backend == "nccl":
        missing = [n for n, v in (("master_address", master_address), ("master_port", master_port),
                                  ("world_size", world_size)) if v is None]
        if missing:
            raise ValueError(f"weight transfer backend 'nccl' needs {', '.join(missing)}")
        init_info = NCCLTrainerInitInfo(master_address, master_port, world_size, rank=rank,
                                        packed=True, packed_buffer_size_bytes=bucket_bytes)
    else:
        raise ValueError(f"weight transfer backend must be 'ipc' or 'nccl' (got {backend!r})")
    if not torch.cuda.is_available():
        raise RuntimeError(f"weight transfer backend {backend!r} needs CUDA; on CPU use weight_sync.sync_weights")
    source = MegatronWeightSource(model, shape, vocab_size_padded)
    return WeightTransferTrainerFactory.trainer_init(init_info, client=client, source=source)
