"""`python -m srpo_megatron.preprocess --math FILE... --code FILE... --out DIR` (see --help).

Writes DIR/stage1_math.parquet, DIR/stage2_code.parquet and DIR/report.json (kept and dropped
counts per reason); with --model also pass_rate/difficulty columns and DIR/difficulty.png; with
--keep-rejects DIR/rejects.jsonl. Prints the report's per-domain counts as one JSON line. On GPU,
grading runs vLLM with its external launcher: start under `torchrun --nproc-per-node=<tensor parallel size>`.
"""

from __future__ import annotations

import argparse
import json
import sys

from srpo_megatron.rollout.sampling import DEFAULT_INSTRUCTIONS, add_sampling_args, rollout_config_from_args
from srpo_megatron.preprocess.dedup import DecontaminationConfig
from srpo_megatron.preprocess.difficulty import DifficultyConfig
from srpo_megatron.preprocess.pipeline import PreprocessConfig, run_preprocess
from srpo_megatron.rewards.combine import RewardConfig


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m srpo_megatron.preprocess", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--math", nargs="+", default=[], metavar="FILE",
                   help="math sets: local jsonl/json/parquet/csv files or hub NAME[@CONFIG][:SPLIT]")
    p.add_argument("--code", nargs="+", default=[], metavar="FILE", help="code sets, same forms as --math")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--eval-sets", nargs="+", default=[], metavar="FILE", help="sets to decontaminate against")
    p.add_argument("--ngram", type=int, default=8, help="decontamination n-gram size in words (default 8)")
    p.add_argument("--contamination-threshold", type=float, default=0.5,
                   help="fraction of a problem's n-grams found in an eval set that drops it (default 0.5)")
    p.add_argument("--keep-rejects", action="store_true", help="write dropped rows with reasons to rejects.jsonl")
    p.add_argument("--max-reference-solutions", type=int, default=1,
                   help="reference programs tried per code problem (default 1)")
    p.add_argument("--math-timeout", type=float, default=5.0, help="seconds per math check (default 5)")
    p.add_argument("--workers", type=int, default=2, help="math-verify processes / parallel programs (default 2)")
    p.add_argument("--cache-dir", default=None, help="datasets cache directory")
    g = p.add_argument_group("difficulty grading (with --model)")
    g.add_argument("--model", default=None, help="base model (HF dir or Megatron checkpoint); omit to skip grading")
    g.add_argument("--samples", type=int, default=8, help="K: samples per problem (default 8)")
    g.add_argument("--hard-max", type=float, default=0.25, help="pass rates in (0, this] are hard (default 0.25)")
    g.add_argument("--medium-max", type=float, default=0.75, help="(hard-max, this] medium, above easy (default 0.75)")
    g.add_argument("--too-easy-at", type=float, default=1.0,
                   help="drop problems with pass rate >= this (default 1.0: always solved)")
    g.add_argument("--keep-too-easy", action="store_true", help="grade but drop nothing as too easy")
    g.add_argument("--math-suffix", default=DEFAULT_INSTRUCTIONS["math"], help="instruction appended to math prompts")
    g.add_argument("--code-suffix", default=DEFAULT_INSTRUCTIONS["code"], help="instruction appended to code prompts")
    add_sampling_args(p, temperature=1.0, top_p=1.0, max_tokens=4096)
    return p


def config_from_args(args: argparse.Namespace) -> PreprocessConfig:
    difficulty = DifficultyConfig(
        samples=args.samples,
        rollout=rollout_config_from_args(args),
        suffixes={"math": args.math_suffix, "code": args.code_suffix},
        hard_max=args.hard_max,
        medium_max=args.medium_max,
        too_easy_at=None if args.keep_too_easy else args.too_easy_at,
        batch_size=args.batch_size,
    )
    return PreprocessConfig(
        out_dir=args.out,
        math_files=args.math,
        code_files=args.code,
        eval_files=args.eval_sets,
        model=args.model,
        difficulty=difficulty,
        decontamination=DecontaminationConfig(ngram=args.ngram, threshold=args.contamination_threshold),
        reward=RewardConfig(math_timeout_s=args.math_timeout, math_workers=args.workers, code_workers=args.workers),
        max_reference_solutions=args.max_reference_solutions,
        keep_rejects=args.keep_rejects,
        cache_dir=args.cache_dir,
    )


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        report = run_preprocess(config_from_args(args))
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps({domain: {"kept": report[domain]["kept"], "dropped": report[domain]["dropped"]}
                      for domain in ("math", "code")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
