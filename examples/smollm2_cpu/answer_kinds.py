"""How a model answers the example's word problems: accuracy, how often it boxes a number (the
run config's format term, `reward.format`), how often it gives the bare answer (`The answer is \\boxed{N}.`, no calculation), and the accuracy of
bare and worked answers apart. This is what the README's reasons for the warm-up rest on.

    python examples/smollm2_cpu/answer_kinds.py --model DIR --data runs/smollm2_cpu/data/eval_math.jsonl \
        [--k 8 --temperature 1.0 --max-tokens 48]

Prompts get the run config's `data.math_instruction` (examples/smollm2_cpu/config.yaml), sampled by
the project's vLLM engine and graded by its math reward. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script from anywhere

from srpo_megatron.config import load_config  # noqa: E402
from srpo_megatron.rewards.format import FormatConfig, format_reward  # noqa: E402

CONFIG = Path(__file__).with_name("config.yaml")
BARE = re.compile(r"\s*The answer is \\boxed\{[^}]*\}")


def answer_kinds(responses: list[str], correct: list[bool], boxed: FormatConfig) -> dict:
    """Shares of boxed (earning the `boxed` format term) and bare responses, and accuracy overall,
    of bare and of worked responses."""
    bare = [bool(BARE.match(r)) for r in responses]

    def accuracy(pick: list[bool]) -> float | None:
        chosen = [c for c, p in zip(correct, pick) if p]
        return round(sum(chosen) / len(chosen), 4) if chosen else None

    return {"responses": len(responses), "accuracy": accuracy([True] * len(responses)),
            "boxed_frac": round(sum(format_reward(r, boxed).score for r in responses) / len(responses), 4),
            "bare_frac": round(sum(bare) / len(responses), 4),
            "accuracy_bare": accuracy(bare), "accuracy_worked": accuracy([not b for b in bare])}


def main() -> None:
    from srpo_megatron.data.dataset import load_rows
    from srpo_megatron.rewards.math import GradingPool, math_reward_batch
    from srpo_megatron.rollout import RolloutConfig, RolloutEngine

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="HF model directory")
    p.add_argument("--data", required=True, help="math rows (JSONL)")
    p.add_argument("--k", type=int, default=8, help="samples per problem")
    p.add_argument("--temperature", type=float, default=1.0, help="0: greedy")
    p.add_argument("--max-tokens", dest="max_tokens", type=int, default=48)
    args = p.parse_args()
    rows = load_rows([args.data], "math")
    config = load_config(CONFIG)
    engine = RolloutEngine(args.model, RolloutConfig(
        temperature=args.temperature, max_response_tokens=args.max_tokens, n_samples_per_prompt=args.k,
        max_model_len=512, cpu_kvcache_space_gib=1.0, dtype="float32", enforce_eager=True))
    try:
        rollouts = engine.generate([row["prompt"] + config.data.math_instruction for row in rows])
    finally:
        engine.shutdown()
    responses = [r.response_text for r in rollouts]
    with GradingPool() as pool:
        results = math_reward_batch(responses, [rows[r.prompt_index]["answer"] for r in rollouts], pool=pool)
    print(json.dumps({"model": args.model, "problems": len(rows), "k": args.k, "temperature": args.temperature,
                      **answer_kinds(responses, [r.score >= 1.0 for r in results], config.reward.format)}))


if __name__ == "__main__":
    main()
