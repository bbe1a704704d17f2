"""HF config -> megatron config mapping and the errors for configurations we cannot build."""

import pytest
from transformers import AutoConfig, Qwen2Config

from srpo_megatron.models import model_shape, padded_vocab_size, transformer_config, validate_parallelism


def _qwen(**overrides):
    base = dict(vocab_size=1001, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, head_dim=64, architectures=["Qwen2ForCausalLM"])
    base.update(overrides)
    return Qwen2Config(**base)


def test_qwen2_shape_reads_gqa_bias_rope_and_tying(tiny_qwen_tied):
    shape = model_shape(AutoConfig.from_pretrained(tiny_qwen_tied))
    assert (shape.num_attention_heads, shape.num_query_groups, shape.head_dim) == (4, 2, 64)
    assert shape.qkv_bias and shape.tied_embeddings
    assert shape.rope_theta == 1_000_000.0 and shape.vocab_size == 1001


def test_llama_has_no_qkv_bias(tiny_llama):
    shape = model_shape(AutoConfig.from_pretrained(tiny_llama))
    assert shape.architecture == "LlamaForCausalLM" and not shape.qkv_bias


def test_transformer_config_maps_qwen2_knobs():
    config = transformer_config(model_shape(_qwen()), tensor_parallel=2)
    assert config.num_query_groups == 2 and config.kv_channels == 64 and config.add_qkv_bias
    assert config.gated_linear_unit and config.normalization == "RMSNorm" and not config.add_bias_linear


def test_unknown_architecture_names_it_and_the_supported_ones():
    with pytest.raises(ValueError, match=r"MixtralForCausalLM.*supported.*LlamaForCausalLM.*Qwen2ForCausalLM"):
        model_shape(_qwen(architectures=["MixtralForCausalLM"]))


@pytest.mark.parametrize("tp, pp, message", [
    (3, 1, r"tensor_parallel=3 does not divide num_attention_heads=4"),
    (4, 1, r"tensor_parallel=4 does not divide the query groups \(num_key_value_heads=2\)"),
    (1, 3, r"pipeline_parallel=3 does not divide num_hidden_layers=2"),
])
def test_bad_parallel_split_fails_naming_the_numbers(tp, pp, message):
    with pytest.raises(ValueError, match=message):
        validate_parallelism(model_shape(_qwen()), tp, pp)


def test_bad_split_fails_before_megatron_config_is_built(monkeypatch):
    import megatron.core.transformer.transformer_config as tc

    monkeypatch.setattr(tc, "TransformerConfig", lambda **kw: pytest.fail("allocated before validation"))
    with pytest.raises(ValueError, match="does not divide"):
        transformer_config(model_shape(_qwen()), tensor_parallel=3)


def test_vocab_padding_is_a_multiple_of_128_times_tp():
    assert padded_vocab_size(1001, 1) == 1024
    assert padded_vocab_size(1001, 2) == 1024
    assert padded_vocab_size(1025, 2) == 1280
