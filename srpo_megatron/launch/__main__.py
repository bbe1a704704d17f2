"""CLI: submit (or dry-run) an SRPO training job with nemo-run.

    python -m srpo_megatron.launch --config examples/qwen2.5-32b/launch.yaml [--dryrun]
        [--set slurm.partition=batch ...] [--train-python PY | --no-train-check] [trainer.key=value ...]

Run it with the launcher virtualenv (.venv-launch); the job itself runs the training stack.
"""

from __future__ import annotations

import argparse
import sys

from srpo_megatron.launch.config import LaunchConfigError, load_launch_config
from srpo_megatron.launch.train_check import check_train_config, training_python


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m srpo_megatron.launch",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", required=True, help="launch YAML (see examples/*/launch*.yaml)")
    parser.add_argument(
        "--dryrun", action="store_true", help="write the sbatch script, print its path, submit nothing"
    )
    parser.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a launch-config field, e.g. --set slurm.time=02:00:00 (repeatable)",
    )
    parser.add_argument(
        "--train-python",
        metavar="PY",
        help="interpreter of the training environment that validates train_config and the overrides "
        "before anything is written (default: python_env's, when it is on this machine)",
    )
    parser.add_argument(
        "--no-train-check",
        action="store_true",
        help="submit without validating the trainer config (when its environment or paths exist only "
        "on the cluster); a bad config then fails when the job starts",
    )
    parser.add_argument("overrides", nargs="*", help="trainer key=value overrides, appended to the config's")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        cfg = load_launch_config(args.config, sets=args.sets)
    except LaunchConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        print(f"error: trainer override {bad[0]!r} is not key=value", file=sys.stderr)
        return 2
    try:
        if args.no_train_check:
            print("warning: --no-train-check: the trainer config is not validated", file=sys.stderr)
        else:
            check_train_config(cfg, args.overrides, training_python(cfg, args.train_python))
    except LaunchConfigError as err:
        print(f"error: launch config {args.config}: {err}", file=sys.stderr)
        return 2
    # nemo-run is imported only now: it is slow to import and not needed to report config errors.
    from srpo_megatron.launch.submit import TASK_NAME, submit, trainer_task

    try:
        result = submit(cfg, trainer_task(cfg, args.overrides), dryrun=args.dryrun)
    except LaunchConfigError as err:
        print(f"error: launch config {args.config}: {err}", file=sys.stderr)
        return 2
    if args.dryrun:
        print(result.sbatch_script or result.experiment_dir)
    elif result.sbatch_script:
        print(f"submitted Slurm job {result.job_id}; script {result.sbatch_script}")
        print(f"logs: {result.experiment_dir}/{TASK_NAME}/log-*.out")
    else:
        print(f"local run {result.job_id}: {result.final_state}; logs under {result.experiment_dir}")
        return 0 if result.final_state == "SUCCEEDED" else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
