"""The policy as vLLM's WeightSource, the stream vLLM's ipc / nccl trainer engines send."""

import json
from pathlib import Path

import pytest
import torch

from srpo_megatron import platform


def source_rank(hf_dir: str, tp: int, pp: int, out_dir: str) -> None:
    from safetensors.torch import load_file
    from transformers import AutoConfig
    from vllm.distributed.weight_transfer.base import layerwise_groups

    from srpo_megatron.convert.hf_to_mcore import load_hf_weights
    from srpo_megatron.models import build_model, model_shape, padded_vocab_size
    from srpo_megatron.rollout.transfer_engine import MegatronWeightSource

    ctx = platform.init_distributed(tp, pp)
    shape = model_shape(AutoConfig.from_pretrained(hf_dir))
    vocab_padded = padded_vocab_size(shape.vocab_size, tp)
    model = build_model(shape, tp, pp, initialize=False, vocab_size_padded=vocab_padded)
    load_hf_weights(model, hf_dir, shape, vocab_padded)
    source = MegatronWeightSource(model, shape, vocab_padded)
    hf = load_file(str(Path(hf_dir) / "model.safetensors"))
    meta = source.metadata()
    # iter_groups is vLLM's own consumer: it raises if iteration disagrees with metadata()
    groups = list(source.iter_groups())
    streamed = [(n, t) for names, tensors in groups for n, t in zip(names, tensors)]
    report = {
        "meta_matches_stream": [(m.name, list(m.shape), str(m.dtype)) for m in meta]
        == [(n, list(t.shape), str(t.dtype)) for n, t in streamed],
        "equals_hf": sorted(n for n, _ in streamed) == sorted(hf)
        and all(torch.equal(t, hf[n]) for n, t in streamed),
        "groups": len(groups),
        "layerwise_groups": len(layerwise_groups([m.name for m in meta])),
        "second_pass_equal": all(torch.equal(a[1], b[1]) for a, b in zip(streamed, source)),
    }
    Path(out_dir, f"rank{ctx.rank}.json").write_text(json.dumps(report))


@pytest.mark.parametrize("tp, pp", [(2, 1), (1, 2)])
def test_weight_source_streams_hf_weights_in_vllm_groups(tiny_qwen, tmp_path, tp, pp):
    from transformers import AutoConfig

    platform.spawn(source_rank, 2, str(tiny_qwen), tp, pp, str(tmp_path))
    layers = AutoConfig.from_pretrained(tiny_qwen).num_hidden_layers
    for path in sorted(tmp_path.glob("rank*.json")):
        report = json.loads(path.read_text())
        assert report["meta_matches_stream"] and report["equals_hf"] and report["second_pass_equal"], report
        # one group per decoder layer, plus the embedding before and norm + lm_head after
        assert report["groups"] == report["layerwise_groups"] == layers + 2, report


def test_connect_checks_its_arguments():
    from srpo_megatron.rollout.transfer_engine import connect_transfer_engine

    with pytest.raises(ValueError, match="needs master_port, world_size"):
        connect_transfer_engine(None, None, 0, client=None, backend="nccl", master_address="10.0.0.1")
    with pytest.raises(ValueError, match="'ipc' or 'nccl'"):
        connect_transfer_engine(None, None, 0, client=None, backend="gloo")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="needs CUDA"):
            connect_transfer_engine(None, None, 0, client=None, backend="ipc")


@pytest.mark.gpu
def test_ipc_transfer_into_colocated_engine(tiny_qwen):
    """vLLM's IPC engine: Megatron weights (perturbed) -> an LLM built with the ipc backend."""
    from transformers import AutoConfig

    from srpo_megatron.convert.hf_to_mcore import load_hf_weights
    from srpo_megatron.models import build_model, model_shape, padded_vocab_size
    from srpo_megatron.models.forward import compute_logprobs
    from srpo_megatron.rollout import RolloutConfig, RolloutEngine
    from srpo_megatron.rollout.transfer_engine import connect_transfer_engine

    platform.init_distributed(1, 1)
    shape = model_shape(AutoConfig.from_pretrained(tiny_qwen))
    vocab_padded = padded_vocab_size(shape.vocab_size, 1)
    model = build_model(shape, 1, 1, initialize=False, vocab_size_padded=vocab_padded)
    load_hf_weights(model, tiny_qwen, shape, vocab_padded)
    engine = RolloutEngine(tiny_qwen, RolloutConfig(max_model_len=128, max_response_tokens=8, dtype="float32",
                                                    enforce_eager=True, enable_sleep_mode=False,
                                                    gpu_memory_utilization=0.3, weight_transfer="ipc"))
    transfer = connect_transfer_engine(model, shape, vocab_padded, client=engine.llm, backend="ipc",
                                       bucket_bytes=1 << 20)
    with torch.no_grad():
        for param in model.parameters():
            param.mul_(1.01)
    transfer.send_weights()
    engine.llm.reset_prefix_cache()
    sequences = torch.randint(0, shape.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    vllm = torch.stack(engine.prompt_logprobs(sequences.tolist()))
    megatron = compute_logprobs(model, [{"tokens": sequences.to(platform.device())}], shape.vocab_size)[0]
    assert (megatron[:, 1:].cpu() - vllm).abs().max().item() < 1e-3
    engine.shutdown()
