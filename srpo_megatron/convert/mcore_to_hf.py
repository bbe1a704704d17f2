"""Megatron distributed checkpoint -> HF safetensors, streaming one parameter at a time.

Megatron's checkpoints are TP/PP-agnostic (global tensors, layers stacked on a leading axis), so
one process reads each parameter's slice for one layer at a time: peak memory is about the
largest tensor plus the current output shard.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tqdm import tqdm

from srpo_megatron.convert import layout
from srpo_megatron.convert.hf_io import ShardedSafetensorsWriter, copy_hf_metadata
from srpo_megatron.convert.mcore_io import CheckpointInfo, hf_config_dir
from srpo_megatron.models.hf_config import ModelShape


def _load_slice(ckpt_dir: Path, key: str, meta, layer: int | None) -> torch.Tensor:
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing import ShardedTensor

    shape = tuple(meta.global_shape)
    if layer is None:
        request = ShardedTensor.from_rank_offsets(key, torch.empty(shape, dtype=meta.dtype), replica_id=0)
    else:
        data = torch.empty((1,) + shape[1:], dtype=meta.dtype)
        request = ShardedTensor.from_rank_offsets(key, data, (0, layer, shape[0]), replica_id=0)
    loaded = dist_checkpointing.load({"t": request}, str(ckpt_dir), validate_access_integrity=False)["t"]
    return loaded if layer is None else loaded[0]


def iter_checkpoint_hf_tensors(ckpt_dir: str | Path, shape: ModelShape):
    """Yield (hf_name, tensor) for every HF tensor, reading one parameter slice at a time."""
    from megatron.core import dist_checkpointing

    ckpt_dir = Path(ckpt_dir)
    metadata = dist_checkpointing.load_tensors_metadata(str(ckpt_dir))
    for rule in layout.param_rules(shape):
        if rule.checkpoint_key not in metadata:
            raise KeyError(f"checkpoint {ckpt_dir} has no tensor {rule.checkpoint_key!r}")
        meta = metadata[rule.checkpoint_key]
        for layer in range(shape.num_layers) if rule.per_layer else [None]:
            yield from layout.hf_named(rule, layer, _load_slice(ckpt_dir, rule.checkpoint_key, meta, layer), shape)


def convert_mcore_to_hf(ckpt_dir: str | Path, out_dir: str | Path, max_shard_bytes: int = 2 * 1024**3) -> Path:
    """Write an HF directory (safetensors, config, tokenizer) from a model checkpoint."""
    from transformers import AutoConfig

    from srpo_megatron import platform
    from srpo_megatron.models import model_shape

    CheckpointInfo.read(ckpt_dir)  # fail early, naming the file, if this is not our checkpoint
    hf_meta = hf_config_dir(ckpt_dir)
    shape = model_shape(AutoConfig.from_pretrained(hf_meta))
    owns_distributed = not torch.distributed.is_initialized()  # megatron's loader needs a group
    platform.init_distributed(1, 1)
    try:
        writer = ShardedSafetensorsWriter(out_dir, max_shard_bytes)
        rules = layout.param_rules(shape)
        total = sum(len(r.hf_names) * (shape.num_layers if r.per_layer else 1) for r in rules)
        for name, tensor in tqdm(iter_checkpoint_hf_tensors(ckpt_dir, shape), total=total,
                                 desc="mcore-to-hf", unit="tensor", disable=None):
            writer.add(name, tensor)
        writer.close()
    finally:
        if owns_distributed:
            platform.destroy_distributed()
    copy_hf_metadata(hf_meta, out_dir)
    return Path(out_dir)
