"""HF checkpoint -> Megatron model shards, one parameter at a time.

Each rank reads only the HF tensors its own parameters need, fuses and slices them, and copies
them into its shard: peak memory per rank is its shard plus the largest HF tensor it reads.
"""

from __future__ import annotations

from pathlib import Path

import torch

from srpo_megatron.convert import layout
from srpo_megatron.convert.hf_io import HFWeights
from srpo_megatron.convert.mcore_io import CheckpointInfo, save_model
from srpo_megatron.models.hf_config import ModelShape


def rule_for(name: str, rules: dict[str, layout.ParamRule], shape: ModelShape) -> layout.ParamRule:
    if layout.is_tied_output_copy(name, shape):
        return rules["embedding.word_embeddings.weight"]
    if name not in rules:
        raise KeyError(f"megatron parameter {name!r} has no conversion rule")
    return rules[name]


@torch.no_grad()
def load_hf_weights(model, hf_dir: str | Path, shape: ModelShape, vocab_size_padded: int) -> None:
    """Fill this rank's model shard from an HF checkpoint (call on every rank)."""
    from megatron.core import parallel_state

    tp_rank = parallel_state.get_tensor_model_parallel_rank()
    tp_size = parallel_state.get_tensor_model_parallel_world_size()
    weights = HFWeights(hf_dir)
    rules = layout.rules_by_name(shape)
    offset = layout.layer_offset(model)
    for name, param in model.named_parameters():
        template, layer = layout.canonical_name(name, offset)
        rule = rule_for(template, rules, shape)
        hf = [weights.get(layout.resolve(n, layer)) for n in rule.hf_names]
        full = layout.hf_to_mcore(rule, hf, shape, vocab_size_padded)
        local = layout.shard(rule, full, tp_rank, tp_size)
        if local.shape != param.shape:
            raise ValueError(f"{name}: HF tensors {list(map(lambda n: layout.resolve(n, layer), rule.hf_names))} "
                             f"give shape {tuple(local.shape)}, the model expects {tuple(param.shape)}")
        param.copy_(local.to(param.dtype))


def convert_rank(hf_dir: str, out_dir: str, tensor_parallel: int, pipeline_parallel: int, dtype: str) -> None:
    """One rank of `hf-to-mcore` (run under `platform.spawn` or torchrun)."""
    from transformers import AutoConfig

    from srpo_megatron import platform
    from srpo_megatron.models import build_model, model_shape, padded_vocab_size

    shape = model_shape(AutoConfig.from_pretrained(hf_dir))
    platform.init_distributed(tensor_parallel, pipeline_parallel)
    vocab_padded = padded_vocab_size(shape.vocab_size, tensor_parallel)
    model = build_model(shape, tensor_parallel, pipeline_parallel, dtype, trainable=False,
                        vocab_size_padded=vocab_padded, initialize=False)
    load_hf_weights(model, hf_dir, shape, vocab_padded)
    info = CheckpointInfo(vocab_padded, dtype, tensor_parallel, pipeline_parallel)
    save_model(model, out_dir, info, hf_dir)
