"""Launch configuration: where and how the trainer runs (not what it trains; that is train_config).

A launch YAML maps onto `LaunchConfig`. String values may use `${VAR}` or `${VAR:-default}` to take
site-specific values (account, image, mounts) from the environment, so one example file serves
every cluster. Validation names the field, the value and the fix. Pure Python: no nemo-run, no torch.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from srpo_megatron.structured import build

EXECUTORS = ("slurm", "local")
TUNNELS = ("local", "ssh")
PACKAGERS = ("none", "git")
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class LaunchConfigError(ValueError):
    """A launch config that cannot be used; the message names the field and how to fix it."""


@dataclass
class TunnelConfig:
    """How nemo-run reaches the Slurm login node."""

    kind: str = "local"
    """`local` when launching from a node of the cluster (sbatch on PATH), `ssh` from elsewhere."""
    job_dir: str = ""
    """Where experiments (sbatch scripts, logs, packaged code) live. `ssh`: an absolute directory
    on the cluster's shared filesystem (required). `local`: defaults to $NEMORUN_HOME."""
    host: str = ""
    """`ssh` only: the login node's host name."""
    user: str = ""
    """`ssh` only: the user name on the login node."""
    identity: str | None = None
    """`ssh` only: private key file; None uses the SSH agent / default keys."""


@dataclass
class SlurmConfig:
    """sbatch resources, container, and preemption handling for `executor: slurm`."""

    account: str = ""
    """Slurm account charged for the job (required)."""
    partition: str | None = None
    """Partition to submit to; None uses the cluster default."""
    time: str = "04:00:00"
    """Wall-clock limit per allocation (HH:MM:SS or D-HH:MM:SS); a requeued job gets a fresh one."""
    container_image: str | None = None
    """Pyxis/enroot image (registry URI or .sqsh path) holding torch, vLLM and megatron-core;
    None runs on the node's own software (then set python_env)."""
    container_mounts: list[str] = field(default_factory=list)
    """Pyxis mounts `SRC:DST[:ro]`: code, data, checkpoints, HF cache."""
    exclusive: bool = True
    """Ask for whole nodes, so no other job shares the GPUs or NVLink domain."""
    qos: str | None = None
    """Quality of service, when the cluster uses them."""
    mem: str | None = None
    """Memory per node (`0` = all of it); None uses the partition default."""
    requeue: bool = True
    """Let Slurm requeue the job after preemption or node failure (`#SBATCH --requeue`)."""
    max_requeues: int = 3
    """How many times the job requeues itself after a non-zero exit (e.g. SIGTERM near the time
    limit); each run resumes from the latest checkpoint through `--resume auto`."""
    term_signal_s: int = 120
    """Seconds before the time limit at which Slurm sends SIGTERM, so the trainer can save a
    checkpoint and exit; torchrun waits as long before it SIGKILLs its workers. 0 disables."""
    setup_commands: list[str] = field(default_factory=list)
    """Shell lines run in the batch script before srun (module loads, exports)."""
    sbatch_extra: dict[str, str] = field(default_factory=dict)
    """More sbatch flags, by their long name without dashes (`constraint: h100`)."""
    tunnel: TunnelConfig = field(default_factory=TunnelConfig)
    """How to reach the cluster."""


@dataclass
class LaunchConfig:
    """One training launch: the trainer command, the process layout and the executor."""

    name: str
    """Experiment title; nemo-run groups runs and logs under it."""
    train_config: str
    """Trainer YAML, relative to the directory the job runs in (the repository)."""
    executor: str = "slurm"
    """`slurm` (sbatch through nemo-run) or `local` (torchrun on this machine)."""
    overrides: list[str] = field(default_factory=list)
    """Trainer `key=value` overrides, passed after `--config`."""
    nodes: int = 1
    """Nodes; torchrun's --nnodes."""
    gpus_per_node: int = 0
    """GPUs per node (one rank per GPU); 0 for CPU-only runs."""
    nproc_per_node: int | None = None
    """Ranks per node (torchrun's --nproc-per-node); defaults to gpus_per_node, or 1 without GPUs."""
    python_env: str | None = None
    """Virtualenv whose bin/ goes first on the job's PATH (it provides torchrun and python);
    None uses the container's or node's own python."""
    code_dir: str | None = None
    """`packager: none`: the repository as the job sees it (shared filesystem, or its mount point
    in the container); each rank starts there. Relative paths resolve against the launch
    directory, which is right when the job shares this filesystem; None means `.`."""
    packager: str = "none"
    """`none`: run the code already at code_dir. `git`: ship the committed HEAD with the job
    (git archive), so a requeued job runs exactly the code it started with."""
    env_vars: dict[str, str] = field(default_factory=dict)
    """Extra environment for the job (NCCL settings, HF_HOME, WANDB_*...)."""
    rdzv_port: int = 29500
    """Port of torchrun's c10d rendezvous store on the first node."""
    slurm: SlurmConfig | None = None
    """Required with `executor: slurm`; not allowed otherwise."""

    @property
    def procs_per_node(self) -> int:
        """Ranks per node, with the default applied (derived here only)."""
        if self.nproc_per_node is not None:
            return self.nproc_per_node
        return self.gpus_per_node or 1


# --------------------------------------------------------------------------- loading


def load_launch_config(
    path: str | Path, sets: list[str] = (), env: dict[str, str] | None = None
) -> LaunchConfig:
    """Read a launch YAML, apply `key.sub=value` sets, interpolate ${VAR}s, build and validate it."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as err:
        raise LaunchConfigError(f"launch config {path}: cannot read it ({err.strerror})") from err
    if not isinstance(raw, dict):
        raise LaunchConfigError(f"launch config {path}: expected a mapping at the top level")
    try:
        for item in sets:
            _apply_set(raw, item)
        raw = _interpolate(raw, os.environ if env is None else env, "")
        cfg = build(LaunchConfig, raw, "", LaunchConfigError)
        validate(cfg)
    except LaunchConfigError as err:
        raise LaunchConfigError(f"launch config {path}: {err}") from None
    return cfg


def _apply_set(raw: dict, item: str) -> None:
    """`slurm.tunnel.job_dir=/x` -> raw['slurm']['tunnel']['job_dir'] = '/x' (value parsed as YAML)."""
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise LaunchConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. slurm.partition=batch")
    *parents, leaf = key.split(".")
    node = raw
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise LaunchConfigError(f"--set {item!r}: {part} is not a section")
    node[leaf] = yaml.safe_load(value)


def _interpolate(value: Any, env: dict[str, str], where: str) -> Any:
    """Replace ${VAR} / ${VAR:-default} in every string; an unset VAR without default is an error."""
    if isinstance(value, dict):
        return {k: _interpolate(v, env, f"{where}.{k}" if where else str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, env, f"{where}[{i}]") for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match) -> str:
        name, default = match.group(1), match.group(2)
        if name in env:
            return env[name]
        if default is not None:
            return default
        raise LaunchConfigError(
            f"{where}: environment variable {name} is not set (value {value!r}); "
            f"export {name}=... or write ${{{name}:-default}}"
        )

    return _ENV_REF.sub(substitute, value)


# --------------------------------------------------------------------------- validation


def validate(cfg: LaunchConfig) -> None:
    """Run every check; each raises LaunchConfigError naming its field."""
    _check_choice("executor", cfg.executor, EXECUTORS)
    _check_choice("packager", cfg.packager, PACKAGERS)
    _check_layout(cfg)
    if cfg.executor == "local":
        _check_local(cfg)
    else:
        _check_slurm(cfg)


def _check_choice(where: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise LaunchConfigError(f"{where}: unknown value {value!r}; valid values: {', '.join(choices)}")


def _check_layout(cfg: LaunchConfig) -> None:
    if not cfg.name or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", cfg.name):
        raise LaunchConfigError(
            f"name: {cfg.name!r} is not a valid experiment title; use letters, digits, '.', '_' or '-'"
        )
    if not cfg.train_config:
        raise LaunchConfigError(
            "train_config: must name the trainer YAML, e.g. examples/tiny_cpu/config.yaml"
        )
    for key in ("nodes", "nproc_per_node", "rdzv_port"):
        value = getattr(cfg, key)
        if value is not None and value < 1:
            raise LaunchConfigError(f"{key}: must be at least 1 (got {value})")
    if cfg.gpus_per_node < 0:
        raise LaunchConfigError(f"gpus_per_node: must be 0 (CPU) or more (got {cfg.gpus_per_node})")
    if cfg.gpus_per_node and cfg.procs_per_node != cfg.gpus_per_node:
        raise LaunchConfigError(
            f"nproc_per_node: each rank drives one GPU, so it must equal gpus_per_node "
            f"(got {cfg.procs_per_node} and {cfg.gpus_per_node}); drop nproc_per_node to default it"
        )
    for i, item in enumerate(cfg.overrides):
        if "=" not in item:
            raise LaunchConfigError(f"overrides[{i}]: {item!r} is not a key=value trainer override")


def _check_local(cfg: LaunchConfig) -> None:
    if cfg.nodes != 1:
        raise LaunchConfigError(
            f"nodes: the local executor runs on this machine only (got {cfg.nodes}); set 1"
        )
    if cfg.slurm is not None:
        raise LaunchConfigError("slurm: only used with executor: slurm; remove the section")
    if cfg.packager != "none":
        raise LaunchConfigError("packager: the local executor runs the code in place; set none")


def _check_slurm(cfg: LaunchConfig) -> None:
    slurm = cfg.slurm
    if slurm is None:
        raise LaunchConfigError("slurm: required with executor: slurm (account, time, tunnel, ...)")
    if not slurm.account:
        raise LaunchConfigError("slurm.account: required; the Slurm account to charge (sacctmgr show assoc)")
    if not re.fullmatch(r"(\d+-)?\d{1,2}(:\d{2}){0,2}", slurm.time):
        raise LaunchConfigError(
            f"slurm.time: {slurm.time!r} is not a Slurm time; write HH:MM:SS or D-HH:MM:SS"
        )
    if slurm.max_requeues < 0 or slurm.term_signal_s < 0:
        raise LaunchConfigError(
            "slurm.max_requeues/term_signal_s: must be >= 0 "
            f"(got {slurm.max_requeues}, {slurm.term_signal_s})"
        )
    for i, mount in enumerate(slurm.container_mounts):
        if len(mount.split(":")) not in (2, 3):
            raise LaunchConfigError(f"slurm.container_mounts[{i}]: {mount!r} is not SRC:DST or SRC:DST:FLAGS")
    _check_choice("slurm.tunnel.kind", slurm.tunnel.kind, TUNNELS)
    if cfg.packager == "git" and cfg.code_dir:
        raise LaunchConfigError(
            "code_dir: not used with packager: git (the job runs in the shipped copy); remove it"
        )
    if slurm.tunnel.kind == "ssh":
        _check_ssh(cfg)


def _check_ssh(cfg: LaunchConfig) -> None:
    tunnel = cfg.slurm.tunnel
    for key in ("host", "user", "job_dir"):
        if not getattr(tunnel, key):
            raise LaunchConfigError(f"slurm.tunnel.{key}: required with kind: ssh")
    if cfg.packager == "none" and not cfg.code_dir:
        raise LaunchConfigError(
            "code_dir: required with packager: none and an ssh tunnel; the repository's absolute path "
            "on the cluster or inside the container, e.g. /workspace/srpo-megatron"
        )
    # Relative paths would resolve on this machine, not on the cluster.
    for key, value in (
        ("slurm.tunnel.job_dir", tunnel.job_dir),
        ("code_dir", cfg.code_dir),
        ("python_env", cfg.python_env),
    ):
        if value and not value.startswith("/"):
            raise LaunchConfigError(
                f"{key}: {value!r} must be an absolute path on the cluster with an ssh tunnel"
            )
