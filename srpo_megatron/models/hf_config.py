"""Hugging Face config -> megatron-core `TransformerConfig`, with validation before allocation.

Supported architectures are registered in `ARCHITECTURES`; each entry states how its HF config
maps onto megatron's knobs. Nothing here touches torch devices or global state.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Mapping

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class ArchitectureRules:
    """What distinguishes one supported HF architecture from another in megatron terms."""

    qkv_bias_attr: str | None  # HF config attribute that says whether q/k/v have biases
    qkv_bias_default: bool  # the value when that attribute is absent


ARCHITECTURES: Mapping[str, ArchitectureRules] = MappingProxyType({
    "Qwen2ForCausalLM": ArchitectureRules(qkv_bias_attr=None, qkv_bias_default=True),
    "LlamaForCausalLM": ArchitectureRules(qkv_bias_attr="attention_bias", qkv_bias_default=False),
})


@dataclass(frozen=True)
class ModelShape:
    """The architecture facts every part of the project needs (builder, converter, weight sync)."""

    architecture: str
    num_layers: int
    hidden_size: int
    ffn_hidden_size: int
    num_attention_heads: int
    num_query_groups: int
    head_dim: int
    vocab_size: int
    max_position_embeddings: int
    rope_theta: float
    rms_norm_eps: float
    qkv_bias: bool
    tied_embeddings: bool

    @property
    def heads_per_group(self) -> int:
        return self.num_attention_heads // self.num_query_groups


def _rope_theta(hf_config: Any) -> float:
    params = getattr(hf_config, "rope_parameters", None) or {}
    rope_type = params.get("rope_type", "default")
    scaling = getattr(hf_config, "rope_scaling", None) or {}
    rope_type = scaling.get("rope_type", scaling.get("type", rope_type))
    if rope_type not in ("default", None):
        raise ValueError(
            f"rope scaling type {rope_type!r} is not supported yet; supported: plain RoPE ('default')"
        )
    theta = params.get("rope_theta", getattr(hf_config, "rope_theta", None))
    if theta is None:
        raise ValueError("the HF config has neither rope_parameters.rope_theta nor rope_theta")
    return float(theta)


def model_shape(hf_config: Any) -> ModelShape:
    """Read a transformers `PretrainedConfig` into a `ModelShape`, or fail naming what is wrong."""
    architectures = list(getattr(hf_config, "architectures", None) or [])
    supported = [a for a in architectures if a in ARCHITECTURES]
    if not supported:
        raise ValueError(
            f"unsupported model architecture {architectures or '(none in config)'}; "
            f"supported: {sorted(ARCHITECTURES)}"
        )
    arch = supported[0]
    rules = ARCHITECTURES[arch]
    heads = hf_config.num_attention_heads
    head_dim = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // heads
    qkv_bias = rules.qkv_bias_default
    if rules.qkv_bias_attr is not None:
        qkv_bias = bool(getattr(hf_config, rules.qkv_bias_attr, rules.qkv_bias_default))
    if getattr(hf_config, "mlp_bias", False):
        raise ValueError(f"{arch} with mlp_bias=True is not supported")
    if getattr(hf_config, "hidden_act", "silu") != "silu":
        raise ValueError(f"hidden_act {hf_config.hidden_act!r} is not supported; supported: 'silu'")
    return ModelShape(
        architecture=arch,
        num_layers=hf_config.num_hidden_layers,
        hidden_size=hf_config.hidden_size,
        ffn_hidden_size=hf_config.intermediate_size,
        num_attention_heads=heads,
        num_query_groups=getattr(hf_config, "num_key_value_heads", None) or heads,
        head_dim=head_dim,
        vocab_size=hf_config.vocab_size,
        max_position_embeddings=hf_config.max_position_embeddings,
        rope_theta=_rope_theta(hf_config),
        rms_norm_eps=hf_config.rms_norm_eps,
        qkv_bias=qkv_bias,
        tied_embeddings=bool(getattr(hf_config, "tie_word_embeddings", False)),
    )


def validate_parallelism(shape: ModelShape, tensor_parallel: int, pipeline_parallel: int) -> None:
    """Fail before anything is allocated when the model cannot be split this way."""
    if tensor_parallel < 1 or pipeline_parallel < 1:
        raise ValueError(f"tensor_parallel and pipeline_parallel must be >= 1 "
                         f"(got {tensor_parallel} and {pipeline_parallel})")
    if shape.num_attention_heads % tensor_parallel:
        raise ValueError(
            f"tensor_parallel={tensor_parallel} does not divide num_attention_heads="
            f"{shape.num_attention_heads}; pick a tensor_parallel that divides it"
        )
    if shape.num_query_groups % tensor_parallel:
        raise ValueError(
            f"tensor_parallel={tensor_parallel} does not divide the query groups "
            f"(num_key_value_heads={shape.num_query_groups}); pick a tensor_parallel that divides it"
        )
    if shape.num_layers % pipeline_parallel:
        raise ValueError(
            f"pipeline_parallel={pipeline_parallel} does not divide num_hidden_layers="
            f"{shape.num_layers}; pick a pipeline_parallel that divides it"
        )


def padded_vocab_size(vocab_size: int, tensor_parallel: int, divisible_by: int = 128) -> int:
    """Megatron's rule: pad the vocabulary to a multiple of divisible_by x TP.

    The padded rows are masked out of every softmax (see `models.builder.mask_padded_vocab`), so
    log-probs equal the unpadded model's exactly.
    """
    multiple = divisible_by * tensor_parallel
    return -(-vocab_size // multiple) * multiple


DTYPES = MappingProxyType({"float32": torch.float32, "bfloat16": torch.bfloat16})


def transformer_config(
    shape: ModelShape,
    tensor_parallel: int = 1,
    pipeline_parallel: int = 1,
    dtype: str = "float32",
    use_te: bool = False,
):
    """The megatron `TransformerConfig` for a model shape; validates the parallel split first."""
    from megatron.core.transformer.transformer_config import TransformerConfig

    validate_parallelism(shape, tensor_parallel, pipeline_parallel)
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not supported; supported: {sorted(DTYPES)}")
    params_dtype = DTYPES[dtype]
    on_gpu = torch.cuda.is_available()
    return TransformerConfig(
        num_layers=shape.num_layers,
        hidden_size=shape.hidden_size,
        ffn_hidden_size=shape.ffn_hidden_size,
        num_attention_heads=shape.num_attention_heads,
        num_query_groups=shape.num_query_groups,
        kv_channels=shape.head_dim,
        tensor_model_parallel_size=tensor_parallel,
        pipeline_model_parallel_size=pipeline_parallel,
        normalization="RMSNorm",
        layernorm_epsilon=shape.rms_norm_eps,
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        add_qkv_bias=shape.qkv_bias,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        params_dtype=params_dtype,
        pipeline_dtype=params_dtype,
        bf16=params_dtype == torch.bfloat16,
        use_cpu_initialization=not on_gpu,
        # Fused kernels exist only with CUDA (and TE for some); the unfused paths compute the same.
        bias_activation_fusion=use_te,
        masked_softmax_fusion=on_gpu,
        bias_dropout_fusion=on_gpu,
        persist_layer_norm=False,  # an Apex kernel option; megatron's torch norm (no TE/Apex) rejects it
        apply_rope_fusion=False,
        gradient_accumulation_fusion=False,
        attention_softmax_in_fp32=True,
        deallocate_pipeline_outputs=True,
    )
