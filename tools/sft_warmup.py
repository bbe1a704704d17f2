"""Short supervised warm-up, so RL starts from partial competence.

A freshly initialised tiny model never produces a `\\boxed{}` answer or a code block, so every rollout
scores 0 and group-relative advantages are all zero: RL has nothing to learn from. This tool trains
a fresh `tools.make_tiny_model` model, or with `--base-model` a pretrained HF model (the SmolLM2
example), on demonstrations (`sft.jsonl` from `examples/<example>/make_data.py`), stopping while it
is still wrong on a good share of the RL train problems (whose prompts the warm-up never sees), and
measures that share with the project's reward functions, greedy and at `--temperature`.

    python tools/sft_warmup.py --data .cache/tiny-data --out .cache/sft [--steps N --seed S]
    python tools/sft_warmup.py --data runs/smollm2_cpu/data --out .cache/sft --base-model .cache/smollm2-135m-instruct ...

Prints JSON: model path, train time, losses and accuracies. The model lands in `OUT/sft-<hash>`,
keyed by the arguments, the data files and this tool's code; a rerun with the same key returns the
saved result without importing torch.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python tools/sft_warmup.py` from anywhere

INFO_FILE = "sft_info.json"
SFT_FILE = "sft.jsonl"
TRAIN_FILES = {"math": "train_math.jsonl", "code": "train_code.jsonl"}
"""The RL train problems accuracy is measured on, per domain; a data directory may hold either or both."""
_CODE_FILES = (Path(__file__), Path(__file__).with_name("make_tiny_model.py"))
_WARMUP_STEPS = 20


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="directory written by an example's make_data.py")
    p.add_argument("--out", required=True, help="cache directory; the model goes to OUT/sft-<hash>")
    p.add_argument("--steps", type=int, default=700,
                   help="optimizer steps: past the point (~500 on the chain task) where the tiny model learns "
                   "to copy the next operand, well short of full competence")
    p.add_argument("--seed", type=int, default=0, help="model init, data order and sampling seed")
    p.add_argument("--batch-size", dest="batch_size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3, help="peak AdamW learning rate (cosine decay)")
    p.add_argument("--base-model", dest="base_model", default=None,
                   help="HF model directory to start from (default: a fresh tiny model built from the "
                   "size flags below, which are then unused)")
    p.add_argument("--temperature", type=float, default=1.0,
                   help="sampling temperature of the measured accuracy, besides greedy (the run's rollout one)")
    p.add_argument("--max-new-tokens", dest="max_new_tokens", type=int, default=0,
                   help="response budget when measuring (0: the longest demonstration + 16 tokens)")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--hidden", type=int, default=256, help="hidden size; heads = hidden / 64")
    p.add_argument("--kv-heads", dest="kv_heads", type=int, default=2)
    p.add_argument("--rope-theta", dest="rope_theta", type=float, default=10_000.0,
                   help="RoPE base; with it (not make_tiny_model's 1e6) copying names was learned sooner")
    p.add_argument("--instruction-suffix", dest="instruction_suffix", default="",
                   help="appended to every prompt; must equal the run config's data.<domain>_instruction")
    p.add_argument("--eval-rows", dest="eval_rows", type=int, default=100,
                   help="train rows per domain to measure accuracy on (0: skip measuring)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    return p


def keyed_files(args: argparse.Namespace) -> list[Path]:
    """Files the result depends on: the corpus, the problems measured on, this tool's code and, for a
    base model, every file of its directory (weights included: two directories with the same config
    but other weights are other models; hashing SmolLM2's 540 MB takes about a second)."""
    data = Path(args.data)
    files = [data / SFT_FILE] + [data / name for name in TRAIN_FILES.values() if (data / name).is_file()]
    if args.base_model:
        files += sorted(path for path in Path(args.base_model).iterdir() if path.is_file())
    return files + list(_CODE_FILES)


def cache_key(args: argparse.Namespace) -> str:
    """Hash of everything the result depends on except the locations and the thread count."""
    digest = hashlib.sha256()
    keyed_args = {k: v for k, v in sorted(vars(args).items()) if k not in ("data", "out", "threads", "base_model")}
    digest.update(json.dumps(keyed_args, sort_keys=True).encode())
    for path in keyed_files(args):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _prompt_text(tokenizer, prompt: str, suffix: str) -> str:
    """The prompt exactly as the rollout engine renders it: suffix, one user turn, generation prompt."""
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt + suffix}], tokenize=False, add_generation_prompt=True
    )


def _examples(tokenizer, rows: list[dict], suffix: str) -> list[tuple[list[int], list[int]]]:
    """(input ids, labels) per row; labels are -100 on the prompt so only the response is learned.
    Prompt and response are tokenised separately, as they are at rollout time."""
    examples = []
    for row in rows:
        prompt = tokenizer.encode(_prompt_text(tokenizer, row["prompt"], suffix), add_special_tokens=False)
        response = tokenizer.encode(row["response"], add_special_tokens=False) + [tokenizer.eos_token_id]
        examples.append((prompt + response, [-100] * len(prompt) + response))
    return examples


def _batches(examples: list, batch_size: int, steps: int, seed: int, pad_id: int):
    """`steps` right-padded (input ids, labels, attention mask) batches from seeded reshuffles.
    Batches mix domains: one-domain batches would pad less but learned copying much later."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    order: list[int] = []
    for _ in range(steps):
        while len(order) < batch_size:
            order += torch.randperm(len(examples), generator=generator).tolist()
        picked, order = [examples[i] for i in order[:batch_size]], order[batch_size:]
        width = max(len(ids) for ids, _ in picked)
        ids = torch.full((batch_size, width), pad_id)
        labels = torch.full((batch_size, width), -100)
        mask = torch.zeros((batch_size, width), dtype=torch.long)
        for i, (row_ids, row_labels) in enumerate(picked):
            ids[i, : len(row_ids)] = torch.tensor(row_ids)
            labels[i, : len(row_labels)] = torch.tensor(row_labels)
            mask[i, : len(row_ids)] = 1
        yield ids, labels, mask


def train(model, tokenizer, rows: list[dict], args: argparse.Namespace) -> list[float]:
    """AdamW with a short linear warm-up and cosine decay to 10%; returns the loss of every step."""
    import torch
    from tqdm import tqdm

    examples = _examples(tokenizer, rows, args.instruction_suffix)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.01)

    def lr_scale(step: int) -> float:
        if step < _WARMUP_STEPS:
            return (step + 1) / _WARMUP_STEPS
        progress = (step - _WARMUP_STEPS) / max(1, args.steps - _WARMUP_STEPS)
        return 0.1 + 0.45 * (1 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_scale)
    model.train()
    losses = []
    batches = _batches(examples, args.batch_size, args.steps, args.seed, tokenizer.pad_token_id)
    with tqdm(batches, total=args.steps, desc="sft", unit="step", file=sys.stderr, mininterval=1.0) as bar:
        for ids, labels, mask in bar:
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())  # a host sync per step is free on CPU
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
    model.eval()
    return losses


def generate(model, tokenizer, prompts: list[str], temperature: float, max_new_tokens: int,
             batch_size: int = 64) -> list[str]:
    """Responses for rendered prompts: greedy when `temperature` is 0, else plain sampling (no top-k/p)."""
    import torch

    sampling = {"do_sample": False}
    if temperature:
        sampling = {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0}
    responses = []
    for start in range(0, len(prompts), batch_size):
        # Left padding: generation continues every prompt from the right edge of the batch.
        batch = tokenizer(prompts[start : start + batch_size], return_tensors="pt", padding=True,
                          padding_side="left", add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(**batch, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                                 eos_token_id=tokenizer.eos_token_id, **sampling)
        new_tokens = out[:, batch["input_ids"].shape[1] :]
        responses += tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
    return responses


def measure_accuracy(model, tokenizer, args: argparse.Namespace, max_new_tokens: int) -> dict:
    """Mean reward (greedy and at `args.temperature`) on the first `eval_rows` train rows of each domain."""
    import torch

    from srpo_megatron.rewards.code import code_reward_batch
    from srpo_megatron.rewards.math import GradingPool, math_reward_batch

    accuracy = {}
    with GradingPool() as pool:
        for domain, name in TRAIN_FILES.items():
            if not (Path(args.data) / name).is_file():
                continue
            rows = _read_jsonl(Path(args.data) / name)[: args.eval_rows]
            prompts = [_prompt_text(tokenizer, row["prompt"], args.instruction_suffix) for row in rows]
            accuracy[domain] = {}
            for label, temperature in (("greedy", 0.0), (f"temperature_{args.temperature:g}", args.temperature)):
                torch.manual_seed(args.seed)
                responses = generate(model, tokenizer, prompts, temperature, max_new_tokens)
                if domain == "math":
                    results = math_reward_batch(responses, [row["answer"] for row in rows], pool=pool)
                else:
                    results = code_reward_batch(responses, [row["tests"] for row in rows])
                accuracy[domain][label] = round(sum(r.score for r in results) / len(results), 4)
    return accuracy


def _save(model, tokenizer, path: Path) -> None:
    """safetensors + tokenizer + generation config: loads with transformers and vLLM."""
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    generation_config = {"eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}
    (path / "generation_config.json").write_text(json.dumps(generation_config, indent=2))


def _build(args: argparse.Namespace, final: Path) -> dict:
    """Train, measure and save into a scratch directory, then move it to `final` in one rename."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tools.make_tiny_model import make_tiny_model

    begin = time.perf_counter()
    torch.set_num_threads(args.threads)
    scratch = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(scratch, ignore_errors=True)
    base = args.base_model or make_tiny_model(scratch / "base", layers=args.layers, hidden=args.hidden,
                                              kv_heads=args.kv_heads, rope_theta=args.rope_theta, seed=args.seed)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(base)
    rows = _read_jsonl(Path(args.data) / SFT_FILE)
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    losses = train(model, tokenizer, rows, args)
    train_time = time.perf_counter() - start
    longest = max(len(tokenizer.encode(row["response"], add_special_tokens=False)) for row in rows)
    accuracy = measure_accuracy(model, tokenizer, args, args.max_new_tokens or longest + 16) if args.eval_rows else {}
    measure_time = time.perf_counter() - start - train_time
    shutil.rmtree(scratch / "base", ignore_errors=True)  # the fresh tiny model's first save, if any
    _save(model, tokenizer, scratch)
    head = max(1, len(losses) // 10)  # first/last 10% of steps: single-step losses are noisy
    info = {
        "model": str(final.resolve()), "steps": args.steps, "seed": args.seed,
        "train_time_s": round(train_time, 1), "measure_time_s": round(measure_time, 1),
        "total_time_s": round(time.perf_counter() - begin, 1),
        "loss_first": round(sum(losses[:head]) / head, 4), "loss_last": round(sum(losses[-head:]) / head, 4),
        "accuracy": accuracy, "eval_rows": args.eval_rows,
    }
    (scratch / INFO_FILE).write_text(json.dumps(info, indent=2))  # written last: marks a complete dir
    shutil.rmtree(final, ignore_errors=True)
    os.replace(scratch, final)
    return info


def run(argv: list[str] | None = None) -> dict:
    """Warm up (or reuse the cached result) and return the info dict with `cached` set."""
    args = _parser().parse_args(argv)
    data = Path(args.data)
    if not (data / SFT_FILE).is_file() or not any((data / name).is_file() for name in TRAIN_FILES.values()):
        raise SystemExit(f"--data {args.data} needs {SFT_FILE} and at least one of {sorted(TRAIN_FILES.values())}: "
                         f"run the example's make_data.py (e.g. `python examples/tiny_cpu/make_data.py --out "
                         f"{args.data}`) first")
    if args.base_model and not (Path(args.base_model) / "config.json").is_file():
        raise SystemExit(f"--base-model {args.base_model} is not an HF model directory (no config.json)")
    final = Path(args.out) / f"sft-{cache_key(args)}"
    if (final / INFO_FILE).is_file():  # the cache directory may have moved since it was written
        return {**json.loads((final / INFO_FILE).read_text()), "model": str(final.resolve()), "cached": True}
    final.parent.mkdir(parents=True, exist_ok=True)
    return {**_build(args, final), "cached": False}


def main() -> None:
    print(json.dumps(run()))


if __name__ == "__main__":
    main()
