"""HF config -> megatron-core GPT models (Qwen2/Qwen2.5, Llama)."""

from srpo_megatron.models.builder import build_model, layer_spec, mask_padded_vocab
from srpo_megatron.models.hf_config import (
    ARCHITECTURES,
    ModelShape,
    model_shape,
    padded_vocab_size,
    transformer_config,
    validate_parallelism,
)

__all__ = [
    "ARCHITECTURES", "ModelShape", "build_model", "layer_spec", "mask_padded_vocab", "model_shape",
    "padded_vocab_size", "transformer_config", "validate_parallelism",
]
