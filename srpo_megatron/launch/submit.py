"""Build the trainer task and submit it (or dry-run it) through a nemo-run Experiment."""

from __future__ import annotations

import glob
import os
import shlex
from dataclasses import dataclass

import nemo_run as run

from srpo_megatron.launch.config import LaunchConfig
from srpo_megatron.launch.executors import build_executor, experiments_base, resolve_path

TRAIN_MODULE = "srpo_megatron.train"
TASK_NAME = "train"


@dataclass(frozen=True)
class Submission:
    """What a launch produced, for printing and for tests."""

    experiment_dir: str
    """Local experiment directory (nemo-run's records; with a local tunnel also the job's logs)."""
    sbatch_script: str | None
    """The generated sbatch script (Slurm only)."""
    job_id: str | None
    """Slurm job id, or the local app id; None for a dry run."""
    final_state: str | None = None
    """Local runs only (they block): torchx's final state, e.g. SUCCEEDED or FAILED."""


def trainer_task(cfg: LaunchConfig, extra_overrides: list[str] = ()) -> run.Script:
    """`python -m srpo_megatron.train --config C k=v... --resume auto`, one per rank under torchrun.

    --resume auto is always passed so that a requeued allocation continues from the latest
    checkpoint instead of starting over."""
    args = ["--config", cfg.train_config, *cfg.overrides, *extra_overrides, "--resume", "auto"]
    return rank_task(cfg, ["-m", TRAIN_MODULE, *args])


def rank_task(cfg: LaunchConfig, python_args: list[str]) -> run.Script:
    """A task that runs `python *python_args` in every rank, from the repository's directory.

    nemo-run starts ranks in its job directory (`job_dir/code`, `/nemo_run/code` in a container),
    which holds the code only with the git packager. With `packager: none` the rank script first
    cds into code_dir, so repository-relative paths in the training config work (srun --chdir
    cannot be used: pyxis rejects a second --container-workdir). torchrun runs the script with
    --no-python, and `exec` keeps python the process that torchrun signals."""
    command = "exec " + " ".join(shlex.quote(arg) for arg in ["python", *python_args])
    if cfg.packager == "none":
        command = f"cd {shlex.quote(resolve_path(cfg.code_dir or '.'))} && {command}"
    return run.Script(inline=command + "\n", entrypoint="bash")


def submit(cfg: LaunchConfig, task: run.Script, dryrun: bool = False) -> Submission:
    """Dry-run (write the sbatch script, submit nothing) or submit `task` with cfg's executor.

    Slurm jobs are submitted detached (the launcher returns once sbatch accepted the job); local
    runs block and stream the ranks' logs, like running torchrun by hand."""
    executor = build_executor(cfg)
    detach = cfg.executor == "slurm"
    # The status table at exit queries sacct, which clusters without accounting do not have.
    with run.Experiment(cfg.name, base_dir=experiments_base(cfg), skip_status_at_exit=True) as exp:
        exp.add(task, executor=executor, name=TASK_NAME)
        if dryrun:
            exp.dryrun(log=False, delete_exp_dir=False)
        else:
            exp.run(detach=detach, tail_logs=not detach)
        job = exp.jobs[0]
    exp_dir = job.executor.experiment_dir
    scripts = sorted(glob.glob(os.path.join(exp_dir, "*_sbatch.sh")))
    job_id = None if dryrun else job.handle.rstrip("/").split("/")[-1]
    final_state = job.state.name if not (dryrun or detach) else None
    return Submission(
        experiment_dir=exp_dir,
        sbatch_script=scripts[0] if scripts else None,
        job_id=job_id,
        final_state=final_state,
    )
