"""Entry point: `torchrun --nproc-per-node N -m srpo_megatron.train --config FILE [k=v ...] [--resume auto]`.

`--check-config` validates the config, its overrides and the model split (against the HF config)
and exits: the launcher runs it before it writes or submits anything.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

from srpo_megatron.process_lifetime import die_with_parent


def die_with_launcher() -> None:
    """Under torchrun, have the kernel SIGKILL this rank when torchrun dies (`kill -9`, a lost
    agent); else the orphaned ranks train on and keep writing the run directory.

    Only under torchrun (it sets TORCHELASTIC_RUN_ID): a run started by hand, e.g. under nohup,
    outlives its shell on purpose. The signal fires when the thread that started us exits;
    torchrun starts its workers from its main thread. SIGKILL, not SIGTERM: SIGTERM asks for a
    checkpoint, which needs every rank and would race a restarted job."""
    if "TORCHELASTIC_RUN_ID" in os.environ:
        die_with_parent()


def main(argv: list[str] | None = None) -> int:
    die_with_launcher()  # first: ranks orphaned during the slow imports below must die too
    parser = argparse.ArgumentParser(prog="python -m srpo_megatron.train", description=__doc__)
    parser.add_argument("--config", required=True, help="YAML run config (see examples/)")
    parser.add_argument("--resume", default=None,
                        help="'auto' (latest complete checkpoint in run_dir, if any; damaged ones are "
                             "skipped, loudly) or a checkpoint path")
    parser.add_argument("--resume-fresh-rng", action="store_true",
                        help="continue with fresh RNG on ranks the checkpoint has no RNG file for "
                             "(e.g. more ranks than saved it); the run is then not an exact continuation")
    parser.add_argument("--check-config", action="store_true",
                        help="validate the config, overrides and model split, print 'config ok', exit")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. training.steps=20")
    args = parser.parse_args(argv)
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # in-process engine per rank
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")

    from srpo_megatron.config import load_config

    try:
        config = load_config(args.config, args.overrides)
        if args.check_config:
            _check_model_split(config)
    except (ValueError, FileNotFoundError) as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    if args.check_config:
        print("config ok")
        return 0

    from srpo_megatron.checkpoint import ResumeRequest
    from srpo_megatron.run_lock import RunDirInUse, RunLock
    from srpo_megatron.trainer import Trainer

    try:
        # Rank 0 only (one holder per job). The other ranks of a refused job wait for it in the
        # rendezvous until torchrun, seeing rank 0 fail, stops them.
        lock = RunLock(config.training.run_dir) if int(os.environ.get("RANK", "0")) == 0 else contextlib.nullcontext()
    except RunDirInUse as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    with lock:
        resume = ResumeRequest(args.resume, args.resume_fresh_rng) if args.resume else None
        trainer = Trainer(config, resume=resume)
        try:
            trainer.train()
        finally:
            trainer.close()
    return 0


def _check_model_split(config) -> None:
    """The TP/PP split against the model's own config: what the trainer checks when it builds."""
    from transformers import AutoConfig

    from srpo_megatron.models import model_shape, validate_parallelism

    shape = model_shape(AutoConfig.from_pretrained(config.model.hf_path))
    try:
        validate_parallelism(shape, config.model.tensor_parallel, config.model.pipeline_parallel)
    except ValueError as err:
        raise ValueError(f"model.tensor_parallel / model.pipeline_parallel do not fit the model at "
                         f"{config.model.hf_path}: {err}") from err


if __name__ == "__main__":
    sys.exit(main())
