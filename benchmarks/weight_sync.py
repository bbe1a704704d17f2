"""Weight sync cost: Megatron TP=2 -> in-process vLLM, against vLLM's own floor and the disk round trip.

Prints one JSON object (times are medians over --repeats, taken after a warm-up):
- `sync_s`: the in-memory sync (`sync_weights`, the trainer's call, with a TP gather built once);
- `floor_s`: vLLM's own in-place reload (`reload_weights`) of HF tensors that are already in
  memory, same process, same engine: what a sync through vLLM's loading path costs at least;
- `sync_over_floor`: the median over repeats of sync / floor, each pair timed back to back (on a
  2-core machine whose speed drifts from second to second, the ratio of medians swings more);
  `sync_over_floor_of_medians`: `sync_s / floor_s`; `gather_only_s`: the TP gather + HF layout
  stream alone;
- `load_only_s`: the engine's own swap (`RolloutEngine.load_weights`; on CPU the direct loader of
  `rollout/cpu_weight_loader.py`, not vLLM's reload) of the same ready tensors, and
  `sync_over_load_only`: `sync_s / load_only_s`, what the gather and the stream add to it;
- `naive_s`: writing an HF checkpoint to disk and having vLLM reload from the path;
- `first_sync_s`: the first sync after the engine started (not in the medians), and
  `first_over_warm` = first_sync_s / sync_s;
- `sync_peak_extra_bytes`, `floor_peak_extra_bytes`: peak extra memory during one sync / floor
  reload, measured as the process's RSS high-water mark (VmHWM, reset through
  /proc/self/clear_refs) minus its RSS just before, after returning freed heap to the OS
  (malloc_trim), so memory that glibc kept from an earlier sync cannot hide the peak. Rank 0's.

    .venv/bin/python benchmarks/weight_sync.py [--hidden 768 --layers 12 --repeats 9 --bucket-mib 32]
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import gc
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


def _timed(fn) -> float:
    """Seconds for fn() on all ranks (barriers on both sides: both engines reload concurrently)."""
    dist.barrier()
    start = time.perf_counter()
    fn()
    dist.barrier()
    return time.perf_counter() - start


def _status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024  # reported in kB
    raise RuntimeError(f"/proc/self/status has no {field}")


def _peak_extra_bytes(fn) -> int:
    """RSS high-water mark during fn() minus RSS before it (Linux, glibc)."""
    gc.collect()
    ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim(0)
    dist.barrier()
    before = _status_bytes("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # "5" resets VmHWM to the current RSS
    fn()
    dist.barrier()
    return _status_bytes("VmHWM") - before


def bench_rank(hf_dir: str, repeats: int, bucket_bytes: int | None, out_file: str, scratch: str) -> None:
    from transformers import AutoConfig

    from srpo_megatron.convert.hf_io import ShardedSafetensorsWriter
    from srpo_megatron.convert.hf_to_mcore import load_hf_weights
    from srpo_megatron.models import build_model, model_shape, padded_vocab_size
    from srpo_megatron.rollout import RolloutConfig, RolloutEngine
    from srpo_megatron.rollout.tp_gather import tensor_parallel_gather
    from srpo_megatron.rollout.weight_sync import iter_full_hf_weights, sync_weights

    ctx = platform.init_distributed(2, 1)
    shape = model_shape(AutoConfig.from_pretrained(hf_dir))
    vocab = padded_vocab_size(shape.vocab_size, 2)
    model = build_model(shape, 2, 1, initialize=False, vocab_size_padded=vocab)
    load_hf_weights(model, hf_dir, shape, vocab)
    engine = RolloutEngine(hf_dir, RolloutConfig(max_model_len=256, max_response_tokens=16, cpu_kvcache_space_gib=0.25,
                                                 dtype="float32", enforce_eager=True))
    gather = tensor_parallel_gather()  # built once, as the trainer does
    sizing = {} if bucket_bytes is None else {"bucket_bytes": bucket_bytes}
    stats = None

    def sync() -> None:
        nonlocal stats
        stats = sync_weights(model, engine, shape, vocab, gather=gather, **sizing)

    def gather_only() -> None:
        for _ in iter_full_hf_weights(model, shape, vocab, gather):
            pass

    def naive() -> None:
        path = Path(scratch) / "naive"
        writer = ShardedSafetensorsWriter(path) if ctx.rank == 0 else None
        for name, tensor in iter_full_hf_weights(model, shape, vocab, gather):
            if writer:
                writer.add(name, tensor)
        if writer:
            writer.close()
        dist.barrier()
        engine.llm.collective_rpc("reload_weights", kwargs={"weights_path": str(path)})
        engine.llm.reset_prefix_cache()

    first_sync = _timed(sync)  # the first sync after engine start, reported on its own
    # the floor's input: ready in memory, each tensor contiguous as an HF checkpoint's
    in_memory = [(name, tensor.contiguous()) for name, tensor in iter_full_hf_weights(model, shape, vocab, gather)]

    def floor() -> None:
        engine.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(in_memory)})

    def load_only() -> None:
        engine.load_weights(in_memory)

    variants = {"sync": sync, "floor": floor, "load_only": load_only, "naive": naive, "gather_only": gather_only}
    for warm_up in variants.values():
        _timed(warm_up)
    runs: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):  # interleaved, so machine noise hits every variant alike
        for name, fn in variants.items():
            runs[name].append(_timed(fn))
    # after the timed runs: malloc_trim in the measurement undoes the allocator's warm state
    peaks = {"sync_peak_extra_bytes": _peak_extra_bytes(sync), "floor_peak_extra_bytes": _peak_extra_bytes(floor)}
    if ctx.rank == 0:
        medians = {f"{name}_s": statistics.median(times) for name, times in runs.items()}
        Path(out_file).write_text(json.dumps(medians | {
            "sync_over_floor": statistics.median(s / f for s, f in zip(runs["sync"], runs["floor"])),
            "sync_over_floor_of_medians": medians["sync_s"] / medians["floor_s"],
            "sync_over_load_only": medians["sync_s"] / medians["load_only_s"],
            "sync_over_naive": medians["sync_s"] / medians["naive_s"],
            "first_sync_s": first_sync, "first_over_warm": first_sync / medians["sync_s"],
            "bytes_moved": stats.bytes_moved, "buckets": stats.buckets, "max_bucket_bytes": stats.max_bucket_bytes,
        } | peaks | {f"{name}_runs_s": times for name, times in runs.items()}))
    engine.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--ffn", type=int, default=3072)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--bucket-mib", type=float, default=None, help="bucket bound (default: sync_weights' own)")
    args = parser.parse_args()
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    from tools.make_tiny_model import make_tiny_model

    bucket_bytes = None if args.bucket_mib is None else int(args.bucket_mib * 2**20)
    with tempfile.TemporaryDirectory() as tmp:
        hf_dir = make_tiny_model(Path(tmp) / "hf", hidden=args.hidden, layers=args.layers, ffn=args.ffn,
                                 kv_heads=4, bias_std=0.0)
        tensors = load_file(str(hf_dir / "model.safetensors")).values()
        params = sum(t.numel() for t in tensors)
        model_bytes = sum(t.numel() * t.element_size() for t in tensors)  # what vLLM must receive
        out = Path(tmp) / "result.json"
        platform.spawn(bench_rank, 2, str(hf_dir), args.repeats, bucket_bytes, str(out), tmp)
        result = json.loads(out.read_text()) | {"model_bytes": model_bytes, "parameters": params, "megatron_tp": 2}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
