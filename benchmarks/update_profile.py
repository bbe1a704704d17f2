"""One policy update against the same forward/backward in HF transformers, on one CPU thread.

The update (`policy.update_policy`) of the SFT-warmed tiny model on a synthetic step of
`--rows` rollouts (prompts of `--prompt` tokens, responses of 20..`--response` tokens, groups of
16, micro-batches of 16), beside the least an HF training step must do on the same micro-batches:
an HF `Qwen2ForCausalLM` forward on each micro-batch cut to its longest row, log-softmax of the
response tokens, backward, grad clipping and AdamW. Both on one thread, as each of two torchrun
ranks runs. Prints JSON: median seconds of each over --repeats (after one warm-up), their ratio,
and with --ops the update's ten most expensive operators (torch profiler, self CPU time).

    .venv/bin/python benchmarks/update_profile.py [--rows 128 --prompt 34 --response 64 --repeats 3 --ops] [overrides]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

from tiny_runs import CONFIG, prepare  # noqa: E402


def synthetic_batch(rows: int, prompt: int, response: int, vocab: int):
    from srpo_megatron.rollout.batch import RolloutBatch

    gen = torch.Generator().manual_seed(0)
    width = prompt + response
    tokens = torch.zeros(rows, width, dtype=torch.long)
    mask = torch.zeros(rows, width, dtype=torch.bool)
    for row, length in enumerate(torch.randint(20, response + 1, (rows,), generator=gen).tolist()):
        tokens[row, : prompt + length] = torch.randint(3, vocab, (prompt + length,), generator=gen)
        mask[row, prompt: prompt + length] = True
    no = torch.zeros(rows, dtype=torch.bool)
    return RolloutBatch(tokens, mask, torch.zeros(rows, width), torch.zeros(rows), no, no, group_size=16,
                        advantages=torch.randn(rows, generator=gen))


def hf_step(model, optimizer, batch, micro: int) -> None:
    """The HF floor: per micro-batch a forward on its own width, response log-probs, backward."""
    optimizer.zero_grad()
    tokens_total = batch.mask.sum()
    lengths = batch.row_lengths()
    for start in range(0, batch.num_rows, micro):
        rows = slice(start, start + micro)
        width = int(lengths[rows].max())
        tokens, mask = batch.tokens[rows, :width], batch.mask[rows, :width]
        logits = model(input_ids=tokens).logits[:, :-1].float()
        logp = torch.log_softmax(logits, -1).gather(-1, tokens[:, 1:, None])[..., 0]
        loss = -(logp * batch.advantages[rows, None] * mask[:, 1:]).sum() / tokens_total
        loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=128, help="rollouts in the step (one rank's share)")
    parser.add_argument("--prompt", type=int, default=34)
    parser.add_argument("--response", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ops", action="store_true", help="also profile one update's operators")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. training.pack_sequences=false")
    args = parser.parse_args()
    torch.set_num_threads(1)
    from transformers import AutoConfig, AutoModelForCausalLM

    from srpo_megatron import platform
    from srpo_megatron.config import load_config
    from srpo_megatron.models import model_shape, padded_vocab_size
    from srpo_megatron.policy import UpdateSettings, build_policy, update_policy

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = prepare(Path(tmp))["SRPO_TINY_MODEL"]
    config = load_config(CONFIG, [f"model.hf_path={model_dir}", "optimizer.lr=5.0e-5", "loss.kl_coef=0.0",
                                  *args.overrides])
    platform.init_distributed(1, 1)
    shape = model_shape(AutoConfig.from_pretrained(model_dir))
    model, optimizer = build_policy(shape, config.model, config.optimizer, padded_vocab_size(shape.vocab_size, 1))
    batch = synthetic_batch(args.rows, args.prompt, args.response, shape.vocab_size)
    settings = UpdateSettings.for_step(config, 0, shape.vocab_size)
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    hf_optimizer = torch.optim.AdamW(hf.parameters(), lr=5.0e-5, betas=(0.9, 0.95), weight_decay=0.0)

    def ours() -> None:
        update_policy(model, optimizer, batch, settings)

    def theirs() -> None:
        hf_step(hf, hf_optimizer, batch, settings.micro_batch_size)

    times: dict[str, list[float]] = {"update_s": [], "hf_floor_s": []}
    ours(), theirs()  # warm-up
    for _ in range(args.repeats):
        for name, fn in (("update_s", ours), ("hf_floor_s", theirs)):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    result = {name: round(statistics.median(t), 4) for name, t in times.items()}
    result["update_over_hf"] = round(result["update_s"] / result["hf_floor_s"], 3)
    if args.ops:
        from torch.profiler import profile

        with profile() as prof:
            ours()
        ops = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:10]
        result["update_top_ops_s"] = {e.key: round(e.self_cpu_time_total / 1e6, 4) for e in ops}
    print(json.dumps(result | {"rows": args.rows, "prompt": args.prompt, "response": args.response,
                               "overrides": args.overrides}))


if __name__ == "__main__":
    main()
