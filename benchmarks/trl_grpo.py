"""TRL's `GRPOTrainer` on the tiny math task: the other half of `benchmarks/vs_trl.py`.

Runs in TRL's own virtualenv (`.venv-trl`, `bash tools/setup_trl.sh`), under torchrun for several
ranks, and writes one JSON line per optimizer step (`step`, `seconds`, `reward_mean`) to `--out`.
The reward is this project's own math reward (`srpo_megatron.rewards.math`, imported from the
repository), the prompts are rendered with the model's chat template exactly as our rollout
engine renders them, and a step is one generation of `prompts x generations` completions and one
optimizer update over them in micro-batches of `--micro-batch` completions.

    .venv-trl/bin/torchrun --nproc-per-node 2 benchmarks/trl_grpo.py --model M --data train_math.jsonl --out t.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True, help="math rows (JSONL with prompt and answer)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--prompts", type=int, default=16, help="prompts per step, over all ranks")
    parser.add_argument("--generations", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--micro-batch", type=int, default=16, help="completions per forward/backward")
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--seed", type=int, default=1234)
    args = parser.parse_args()

    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from srpo_megatron.rewards.math import GradingPool, math_reward_batch

    world = int(os.environ.get("WORLD_SIZE", "1"))
    completions = args.prompts * args.generations
    if completions % (world * args.micro_batch):
        raise ValueError(f"--prompts x --generations ({completions}) must split into {world} ranks x "
                         f"micro-batches of --micro-batch {args.micro_batch}")
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    rows = [json.loads(line) for line in Path(args.data).read_text().splitlines() if line.strip()]
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": r["prompt"]}], tokenize=False,
                                             add_generation_prompt=True) for r in rows]
    dataset = Dataset.from_dict({"prompt": prompts, "answer": [r["answer"] for r in rows]})
    pool = GradingPool(workers=1)

    def accuracy(completions: list[str], answer: list[str], **_) -> list[float]:
        return [r.score for r in math_reward_batch(completions, answer, pool=pool)]

    config = GRPOConfig(
        output_dir=str(Path(args.out).with_suffix("")) + "-trl", use_cpu=True, report_to="none",
        save_strategy="no", logging_steps=1, max_steps=args.steps, seed=args.seed,
        learning_rate=args.lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
        adam_beta1=0.9, adam_beta2=0.95, max_grad_norm=1.0,
        beta=0.0, num_iterations=1, epsilon=0.2, temperature=1.0, top_p=1.0,
        num_generations=args.generations, max_completion_length=args.max_new_tokens,
        per_device_train_batch_size=args.micro_batch,
        gradient_accumulation_steps=completions // (world * args.micro_batch),
        disable_dropout=True, dataloader_num_workers=0,
    )

    class StepClock(TrainerCallback):
        """Wall time of each optimizer step: its generation, scoring and update."""

        def __init__(self) -> None:
            self.start = 0.0
            self.records: list[dict] = []

        def on_step_begin(self, args_, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_step_end(self, args_, state, control, **kwargs):
            self.records.append({"step": state.global_step, "seconds": time.perf_counter() - self.start})

        def on_log(self, args_, state, control, logs=None, **kwargs):
            if logs and self.records and "reward" in logs:
                self.records[-1]["reward_mean"] = logs["reward"]

    clock = StepClock()
    trainer = GRPOTrainer(model=args.model, reward_funcs=accuracy, args=config, train_dataset=dataset,
                          processing_class=tokenizer, callbacks=[clock])
    try:
        trainer.train()
    finally:
        pool.close()
    if trainer.accelerator.is_main_process:
        Path(args.out).write_text("".join(json.dumps(r) + "\n" for r in clock.records))


if __name__ == "__main__":
    main()
