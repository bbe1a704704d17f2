"""Build megatron-core GPT models (policy and frozen reference) from an HF model shape.

The layer spec is chosen in one place: Transformer Engine layers when TE imports (GPU machines),
megatron's local layers otherwise. Both compute the same function; only parameter names of the
fused layer norms differ, which `convert.layout` accounts for.
"""

from __future__ import annotations

import torch

from srpo_megatron.models.hf_config import ModelShape, padded_vocab_size, transformer_config


def transformer_engine_available() -> bool:
    if not torch.cuda.is_available():
        return False
    try:
        import transformer_engine  # noqa: F401
    except ImportError:
        return False
    return True


def layer_spec(use_te: bool):
    """megatron's GPT layer spec: TE modules (fused norms, fused attention) or local modules with
    PyTorch's fused attention (`models.attention.SdpaAttention`) as the core attention."""
    from megatron.core.models.gpt import gpt_layer_specs

    from srpo_megatron.models.attention import SdpaAttention

    if use_te:
        return gpt_layer_specs.get_gpt_layer_with_transformer_engine_spec()
    spec = gpt_layer_specs.get_gpt_layer_local_spec(normalization="RMSNorm")
    spec.submodules.self_attention.submodules.core_attention = SdpaAttention
    return spec


def build_model(
    shape: ModelShape,
    tensor_parallel: int = 1,
    pipeline_parallel: int = 1,
    dtype: str = "float32",
    trainable: bool = True,
    vocab_size_padded: int | None = None,
    use_te: bool | None = None,
    initialize: bool = True,
):
    """This rank's pipeline stage of the GPTModel. Requires `platform.init_distributed` first.

    `trainable=False` gives the frozen reference model: same weights layout, no gradients, eval.
    `vocab_size_padded` defaults to megatron's padding rule; pass a checkpoint's value to load it.
    `initialize=False` skips random initialisation when weights are loaded right after.
    """
    from megatron.core import parallel_state
    from megatron.core.models.gpt import GPTModel

    use_te = transformer_engine_available() if use_te is None else use_te
    config = transformer_config(shape, tensor_parallel, pipeline_parallel, dtype, use_te=use_te)
    config.perform_initialization = initialize
    vocab = vocab_size_padded or padded_vocab_size(shape.vocab_size, tensor_parallel)
    if vocab % tensor_parallel or vocab < shape.vocab_size:
        raise ValueError(f"padded vocabulary {vocab} must be >= vocab_size {shape.vocab_size} and "
                         f"divisible by tensor_parallel={tensor_parallel}")
    model = GPTModel(
        config=config,
        transformer_layer_spec=layer_spec(use_te),
        vocab_size=vocab,
        max_sequence_length=shape.max_position_embeddings,
        pre_process=parallel_state.is_pipeline_first_stage(),
        post_process=parallel_state.is_pipeline_last_stage(),
        parallel_output=True,
        share_embeddings_and_output_weights=shape.tied_embeddings,
        position_embedding_type="rope",
        rotary_base=int(shape.rope_theta),
    )
    if torch.cuda.is_available():
        model.cuda(torch.cuda.current_device())
    if not trainable:
        model.eval()
        model.requires_grad_(False)
    return model


def mask_padded_vocab(logits: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """This TP shard's logits with the padding vocabulary rows at the lowest float (out of place).

    logits: [..., V_padded / tp]. Padding rows exist only so TP divides the vocabulary; masking
    them makes every softmax equal the unpadded model's. The lowest finite value rather than
    -inf keeps entropy's p * logit terms at 0 instead of NaN.
    """
    from megatron.core import parallel_state

    shard = logits.shape[-1]
    first_pad = vocab_size - parallel_state.get_tensor_model_parallel_rank() * shard
    if first_pad >= shard:
        return logits
    is_pad = torch.arange(shard, device=logits.device) >= max(first_pad, 0)
    return logits.masked_fill(is_pad, torch.finfo(logits.dtype).min)
