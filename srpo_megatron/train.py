"""Entry point: `torchrun --nproc-per-node N -m srpo_megatron.train --config FILE [k=v ...] [--resume auto]`."""

from __future__ import annotations

import argparse
import os
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m srpo_megatron.train", description=__doc__)
    parser.add_argument("--config", required=True, help="YAML run config (see examples/)")
    parser.add_argument("--resume", default=None,
                        help="'auto' (latest complete checkpoint in run_dir, if any) or a checkpoint path")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. training.steps=20")
    args = parser.parse_args(argv)
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # in-process engine per rank
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")

    from srpo_megatron.config import load_config

    try:
        config = load_config(args.config, args.overrides)
    except (ValueError, FileNotFoundError) as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2

    from srpo_megatron.trainer import Trainer

    trainer = Trainer(config, resume=args.resume)
    try:
        trainer.train()
    finally:
        trainer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
