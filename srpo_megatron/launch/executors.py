"""Turn a LaunchConfig into a nemo-run executor (Slurm or local) with the torchrun launcher.

The torchrun launcher makes nemo-run run one `torchrun --nnodes N --nproc-per-node P
--rdzv-backend c10d --rdzv-endpoint $head_node_ip:PORT` per node (sbatch gets --ntasks-per-node=1),
so ranks find each other through the first node's c10d store.
"""

from __future__ import annotations

import os
from pathlib import Path

import nemo_run as run
from nemo_run.config import get_nemorun_home

from srpo_megatron.launch.config import LaunchConfig, LaunchConfigError, SlurmConfig


def resolve_path(path: str) -> str:
    """A config path as the job sees it: relative paths resolve against the launch directory,
    which is right when the cluster shares this filesystem (local tunnel, local executor)."""
    return str(Path(path).expanduser().resolve()) if not path.startswith("/") else path


def experiments_base(cfg: LaunchConfig) -> str:
    """Local directory holding nemo-run's experiment records (and, with a local tunnel, the jobs)."""
    slurm = cfg.slurm
    if slurm is not None and slurm.tunnel.kind == "local" and slurm.tunnel.job_dir:
        return resolve_path(slurm.tunnel.job_dir)
    return get_nemorun_home()


def build_executor(cfg: LaunchConfig) -> run.Executor:
    """The executor for cfg.executor; raises LaunchConfigError for nemo-run-level mistakes."""
    launcher = run.Torchrun(rdzv_backend="c10d", rdzv_port=cfg.rdzv_port)
    if cfg.executor == "local":
        return run.LocalExecutor(
            ntasks_per_node=cfg.procs_per_node,
            nodes=1,
            launcher=launcher,
            env_vars=_local_env(cfg),
        )
    return _slurm_executor(cfg, cfg.slurm, launcher)


def _local_env(cfg: LaunchConfig) -> dict[str, str]:
    env = dict(cfg.env_vars)
    if cfg.python_env:
        # The local scheduler passes env to Popen verbatim (no shell), so $PATH is expanded here.
        env["PATH"] = f"{resolve_path(cfg.python_env)}/bin:{os.environ.get('PATH', '')}"
    return env


def _slurm_env(cfg: LaunchConfig, slurm: SlurmConfig) -> dict[str, str]:
    env = dict(cfg.env_vars)
    if cfg.python_env:
        # Exported unquoted in the batch script, so $PATH expands on the node.
        env["PATH"] = f"{resolve_path(cfg.python_env)}/bin:$PATH"
    if slurm.term_signal_s:
        # torchrun SIGKILLs its workers 30 s after forwarding SIGTERM by default: too short for a
        # sharded checkpoint. Give them the whole warning window (torch versions without this
        # variable ignore it).
        env.setdefault("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", str(slurm.term_signal_s))
    return env


def _tunnel(cfg: LaunchConfig, slurm: SlurmConfig) -> run.SSHTunnel | run.LocalTunnel:
    tunnel = slurm.tunnel
    if tunnel.kind == "ssh":
        return run.SSHTunnel(
            host=tunnel.host, user=tunnel.user, job_dir=tunnel.job_dir, identity=tunnel.identity
        )
    # nemo-run writes the sbatch script into the experiment directory but runs the job in the
    # tunnel's job_dir: with a local tunnel both must be the same place.
    return run.LocalTunnel(job_dir=os.path.join(experiments_base(cfg), "experiments"))


def _sbatch_extra(slurm: SlurmConfig) -> dict[str, object]:
    params: dict[str, object] = {}
    for key, value in slurm.sbatch_extra.items():
        if key.replace("-", "_") not in run.SlurmExecutor.SBATCH_FLAGS:
            raise LaunchConfigError(
                f"slurm.sbatch_extra.{key}: not an sbatch flag nemo-run knows; "
                f"use the long name with '_', e.g. constraint, gres, reservation"
            )
        params[key.replace("-", "_")] = value
    if slurm.requeue:
        # nemo-run also passes --requeue on the sbatch command line; in the script it survives a
        # manual resubmission of the same file.
        params["requeue"] = True
    return params


def _slurm_executor(cfg: LaunchConfig, slurm: SlurmConfig, launcher: run.Torchrun) -> run.SlurmExecutor:
    container_env = None
    if slurm.container_image and cfg.python_env:
        # Pyxis keeps the image's PATH unless told to take the batch script's.
        container_env = ["PATH"]
    return run.SlurmExecutor(
        account=slurm.account,
        partition=slurm.partition,
        job_name_prefix=f"{cfg.name}-",
        time=slurm.time,
        nodes=cfg.nodes,
        # The torchrun launcher turns this into --nproc-per-node and asks sbatch for 1 task/node.
        ntasks_per_node=cfg.procs_per_node,
        gpus_per_node=cfg.gpus_per_node or None,
        exclusive=True if slurm.exclusive else None,
        qos=slurm.qos,
        mem=slurm.mem,
        signal=f"TERM@{slurm.term_signal_s}" if slurm.term_signal_s else None,
        container_image=slurm.container_image,
        container_mounts=list(slurm.container_mounts),
        container_env=container_env,
        additional_parameters=_sbatch_extra(slurm) or None,
        setup_lines="\n".join(slurm.setup_commands) or None,
        env_vars=_slurm_env(cfg, slurm),
        tunnel=_tunnel(cfg, slurm),
        packager=run.GitArchivePackager() if cfg.packager == "git" else run.Packager(),
        launcher=launcher,
        retries=slurm.max_requeues,
        # The estimated-start-time poller is a background thread; a detached submit does not need it.
        poll_estimated_start_time=False,
    )
