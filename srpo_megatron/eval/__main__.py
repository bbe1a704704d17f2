"""`python -m srpo_megatron.eval --model DIR (--math FILE | --code FILE) --k K [--out FILE]` (see --help).

Prints the aggregate as one JSON line; `--out` gets it with the per-problem details. On GPU the engine
runs with vLLM's external launcher: start it under `torchrun --nproc-per-node=<tensor parallel size>`.
"""

from __future__ import annotations

import argparse
import json
import sys

from srpo_megatron.eval.evaluate import EvalConfig, evaluate, write_result
from srpo_megatron.rollout.sampling import add_sampling_args, rollout_config_from_args
from srpo_megatron.rewards.combine import RewardConfig


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m srpo_megatron.eval", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="HF model directory or Megatron checkpoint")
    data = parser.add_mutually_exclusive_group(required=True)
    data.add_argument("--math", help="math set (AIME style: problem + answer), file or hub NAME[@CONFIG][:SPLIT]")
    data.add_argument("--code", help="code set (LiveCodeBench style: question + tests), same forms")
    parser.add_argument("--k", type=int, default=1, help="samples per problem (avg@k), default 1")
    parser.add_argument("--out", help="write the full result (aggregate + per-problem details) here as JSON")
    parser.add_argument("--suffix", default=None, help="instruction appended to each prompt (default per domain)")
    parser.add_argument("--math-timeout", type=float, default=5.0, help="seconds per math grading")
    parser.add_argument("--workers", type=int, default=2, help="math grading processes / parallel programs")
    parser.add_argument("--cache-dir", default=None, help="datasets cache directory")
    add_sampling_args(parser, temperature=0.6, top_p=0.95, max_tokens=4096)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = EvalConfig(
            model=args.model,
            data=args.math or args.code,
            domain="math" if args.math else "code",
            k=args.k,
            rollout=rollout_config_from_args(args),
            instruction_suffix=args.suffix,
            reward=RewardConfig(math_timeout_s=args.math_timeout, math_workers=args.workers,
                                code_workers=args.workers),
            batch_size=args.batch_size,
            cache_dir=args.cache_dir,
        )
        result = evaluate(config)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.out:
        write_result(result, args.out)
    summary = {key: value for key, value in result.items() if key != "problems"}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
