"""Weight sync cost: Megatron TP=2 -> in-process vLLM, against the naive disk round trip.

Prints one JSON object: `sync_s` (median in-memory sync), `naive_s` (median of writing an HF
checkpoint to disk and having vLLM reload from the path), `bytes_moved` and `model_bytes`.

    .venv/bin/python benchmarks/weight_sync.py [--hidden 768 --layers 12 --repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch.distributed as dist
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from srpo_megatron import platform  # noqa: E402


def bench_rank(hf_dir: str, repeats: int, out_file: str, scratch: str) -> None:
    from transformers import AutoConfig

    from srpo_megatron.convert.hf_io import ShardedSafetensorsWriter
    from srpo_megatron.convert.hf_to_mcore import load_hf_weights
    from srpo_megatron.models import build_model, model_shape, padded_vocab_size
    from srpo_megatron.rollout import RolloutConfig, RolloutEngine
    from srpo_megatron.rollout.weight_sync import iter_full_hf_weights, sync_weights

    ctx = platform.init_distributed(2, 1)
    shape = model_shape(AutoConfig.from_pretrained(hf_dir))
    vocab = padded_vocab_size(shape.vocab_size, 2)
    model = build_model(shape, 2, 1, initialize=False, vocab_size_padded=vocab)
    load_hf_weights(model, hf_dir, shape, vocab)
    engine = RolloutEngine(hf_dir, RolloutConfig(max_model_len=256, max_response_tokens=16, cpu_kvcache_space_gib=0.25,
                                                 dtype="float32", enforce_eager=True))
    sync_times, naive_times, gather_times, stats = [], [], [], None
    for _ in range(repeats):
        dist.barrier()
        start = time.perf_counter()
        for _ in iter_full_hf_weights(model, shape, vocab):
            pass
        gather_times.append(time.perf_counter() - start)
        dist.barrier()
        start = time.perf_counter()
        stats = sync_weights(model, engine, shape, vocab)
        dist.barrier()
        sync_times.append(time.perf_counter() - start)

        start = time.perf_counter()
        path = Path(scratch) / "naive"
        writer = ShardedSafetensorsWriter(path) if ctx.rank == 0 else None
        for name, tensor in iter_full_hf_weights(model, shape, vocab):
            if writer:
                writer.add(name, tensor)
        if writer:
            writer.close()
        dist.barrier()
        engine.llm.collective_rpc("reload_weights", kwargs={"weights_path": str(path)})
        engine.llm.reset_prefix_cache()
        dist.barrier()
        naive_times.append(time.perf_counter() - start)
    if ctx.rank == 0:
        Path(out_file).write_text(json.dumps({
            "sync_s": statistics.median(sync_times), "naive_s": statistics.median(naive_times),
            "bytes_moved": stats.bytes_moved, "buckets": stats.buckets,
            "gather_only_s": statistics.median(gather_times), "sync_runs_s": sync_times, "naive_runs_s": naive_times,
        }))
    engine.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--ffn", type=int, default=3072)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    from tools.make_tiny_model import make_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        hf_dir = make_tiny_model(Path(tmp) / "hf", hidden=args.hidden, layers=args.layers, ffn=args.ffn,
                                 kv_heads=4, bias_std=0.0)
        tensors = load_file(str(hf_dir / "model.safetensors")).values()
        params = sum(t.numel() for t in tensors)
        model_bytes = sum(t.numel() * t.element_size() for t in tensors)  # what vLLM must receive
        out = Path(tmp) / "result.json"
        platform.spawn(bench_rank, 2, str(hf_dir), args.repeats, str(out), tmp)
        result = json.loads(out.read_text()) | {"model_bytes": model_bytes, "parameters": params, "megatron_tp": 2}
    result["sync_over_naive"] = result["sync_s"] / result["naive_s"]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
