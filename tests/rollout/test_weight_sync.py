"""Weight sync from Megatron TP/PP shards into per-rank vLLM engines (2 gloo processes)."""

import json
import zlib
from pathlib import Path

import pytest
import torch

from srpo_megatron import platform


def _perturb(model, round_index: int, tied: bool) -> None:
    """Change every weight as a training step would; replicated tensors identically on all TP ranks,
    and a tied output layer's copy on the last pipeline stage exactly as its embedding on the first
    (megatron's finalize_model_grads keeps the two equal in training)."""
    from megatron.core import parallel_state

    tp_rank = parallel_state.get_tensor_model_parallel_rank()
    with torch.no_grad():
        for name, param in model.named_parameters():
            sharded = getattr(param, "tensor_model_parallel", False)
            key = "embedding.word_embeddings.weight" if tied and name == "output_layer.weight" else name
            seed = 1000 * round_index + zlib.crc32(key.encode()) % 997 + (tp_rank if sharded else 0)
            noise = torch.randn(param.shape, generator=torch.Generator().manual_seed(seed))
            param.add_(0.05 * noise.to(param.dtype))


def sync_rank(hf_dir: str, tp: int, pp: int, out_dir: str) -> None:
    from transformers import AutoConfig

    from srpo_megatron.convert.hf_to_mcore import load_hf_weights
    from srpo_megatron.models import build_model, model_shape, padded_vocab_size
    from srpo_megatron.models.forward import compute_logprobs
    from srpo_megatron.rollout import RolloutConfig, RolloutEngine
    from srpo_megatron.rollout.tp_gather import tensor_parallel_gather
    from srpo_megatron.rollout.weight_sync import sync_weights

    ctx = platform.init_distributed(tp, pp)
    gather = tensor_parallel_gather()
    shard = torch.arange(6.0).reshape(2, 3) + 10 * ctx.tp_rank
    gathered = gather(shard)
    expected = torch.stack([torch.arange(6.0).reshape(2, 3) + 10 * r for r in range(tp)])
    # one host, vLLM's CPU build: TP shards travel through shared memory, not gloo
    gather_ok = torch.equal(gathered, expected) and gather.uses_shared_memory == (tp > 1)
    shape = model_shape(AutoConfig.from_pretrained(hf_dir))
    vocab_padded = padded_vocab_size(shape.vocab_size, tp)
    model = build_model(shape, tp, pp, initialize=False, vocab_size_padded=vocab_padded)
    load_hf_weights(model, hf_dir, shape, vocab_padded)
    engine = RolloutEngine(hf_dir, RolloutConfig(
        max_model_len=128, cpu_kvcache_space_gib=0.25, max_response_tokens=8, seed=0,
        dtype="float32", enforce_eager=True))
    reloads = []  # every engine.load_weights call: one per sync, however many buckets
    load_weights = engine.load_weights
    engine.load_weights = lambda weights: reloads.append(1) or load_weights(weights)
    sequences = torch.randint(0, shape.vocab_size, (3, 24), generator=torch.Generator().manual_seed(7))
    results = []
    for round_index in range(2):  # two syncs in a row
        _perturb(model, round_index, shape.tied_embeddings)
        reloads.clear()
        stats = sync_weights(model, engine, shape, vocab_padded, bucket_bytes=256 * 1024, gather=gather)
        vllm = torch.stack(engine.prompt_logprobs(sequences.tolist()))  # [3, 23]
        megatron = compute_logprobs(model, [{"tokens": sequences}], shape.vocab_size)
        if ctx.is_last_pp_stage:
            diff = (megatron[0][:, 1:] - vllm).abs().max().item()
            results.append({"diff": diff, "buckets": stats.buckets, "bytes": stats.bytes_moved,
                            "gather_ok": gather_ok, "reloads": len(reloads)})
    samples = engine.generate(["What is 1 + 1?", "Compute 2 * 3."], n=3)
    if ctx.is_last_pp_stage:
        results.append({"samples": len(samples), "prompt_index": [s.prompt_index for s in samples]})
    Path(out_dir, f"rank{ctx.rank}.json").write_text(json.dumps(results))
    engine.shutdown()


@pytest.mark.parametrize("tp, pp, tied", [(2, 1, False), (1, 2, False), (2, 1, True), (1, 2, True)])
def test_sync_makes_vllm_equal_megatron(tiny_qwen, tiny_qwen_tied, tmp_path, tp, pp, tied):
    """Tied embeddings: the stream carries the embedding only, and vLLM's output layer must follow
    it (on CPU it kept its load-time GEMM handle: log-probs were off by 2-4 nats before the fix)."""
    platform.spawn(sync_rank, 2, str(tiny_qwen_tied if tied else tiny_qwen), tp, pp, str(tmp_path))
    files = sorted(tmp_path.glob("rank*.json"))
    results = [json.loads(f.read_text()) for f in files]
    results = [r for r in results if r]
    assert results, "no rank on the last pipeline stage reported"
    for rank_results in results:
        first, second, generation = rank_results
        assert first["diff"] < 1e-4 and second["diff"] < 1e-4, rank_results
        assert first["buckets"] > 1  # small buckets: the stream was split
        assert first["reloads"] == second["reloads"] == 1  # ...and still reached vLLM as one reload
        assert first["gather_ok"]
        assert generation["samples"] == 6 and generation["prompt_index"] == [0, 0, 0, 1, 1, 1]


class _DroppingSink:
    """Stands in for the engine: takes each bucket and lets it go, recording the peak memory."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.peak = 0

    def load_weights(self, weights) -> None:
        self.names += [name for name, _ in weights]
        self.peak = max(self.peak, torch.cuda.max_memory_allocated())


@pytest.mark.gpu
def test_sync_stream_on_gpu_is_exact_and_bounded_by_the_bucket(tmp_path):
    """On CUDA (NCCL): the stream equals the HF checkpoint bit for bit, and the extra GPU memory
    a sync needs at the default bucket bound stays within one bucket plus two layers (the bucket
    may close a layer late)."""
    from safetensors.torch import load_file
    from transformers import AutoConfig

    from srpo_megatron.convert.hf_to_mcore import load_hf_weights
    from srpo_megatron.models import build_model, model_shape, padded_vocab_size
    from srpo_megatron.rollout.weight_sync import DEFAULT_BUCKET_BYTES, iter_full_hf_weights, sync_weights
    from tools.make_tiny_model import make_tiny_model

    hf_dir = make_tiny_model(tmp_path / "hf", hidden=768, layers=12, ffn=3072, kv_heads=4)
    platform.init_distributed(1, 1)
    shape = model_shape(AutoConfig.from_pretrained(hf_dir))
    vocab_padded = padded_vocab_size(shape.vocab_size, 1)
    model = build_model(shape, 1, 1, initialize=False, vocab_size_padded=vocab_padded)
    load_hf_weights(model, hf_dir, shape, vocab_padded)
    hf = load_file(str(hf_dir / "model.safetensors"))
    streamed = dict(iter_full_hf_weights(model, shape, vocab_padded))
    assert streamed.keys() == hf.keys()
    assert all(t.is_cuda and torch.equal(t.cpu(), hf[n]) for n, t in streamed.items())
    del streamed
    layer_bytes = sum(t.numel() * t.element_size() for n, t in hf.items() if n.startswith("model.layers.0."))
    bucket_bytes = DEFAULT_BUCKET_BYTES
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    baseline = torch.cuda.memory_allocated()
    sink = _DroppingSink()
    stats = sync_weights(model, sink, shape, vocab_padded)
    extra = sink.peak - baseline
    print(f"sync extra peak {extra / 2**20:.1f} MiB, bucket {bucket_bytes / 2**20:.0f} MiB, "
          f"layer {layer_bytes / 2**20:.1f} MiB, model {stats.bytes_moved / 2**20:.1f} MiB, buckets {stats.buckets}")
    assert sorted(sink.names) == sorted(hf) and stats.buckets > 1
    assert extra <= bucket_bytes + 2 * layer_bytes < stats.bytes_moved / 2
