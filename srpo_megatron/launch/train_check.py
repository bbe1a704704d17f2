"""The trainer config a launch would run, validated by the trainer's own config code before the
launcher writes or submits anything.

The launcher's virtualenv has no torch (nemo-run's pins conflict with vLLM's) and the trainer's
config dataclasses live beside torch code, so the check runs `python -m srpo_megatron.train
--check-config` (config, overrides, and the TP/PP split against the HF config) with the training
environment's interpreter: `--train-python`, else python_env's when it exists on this machine. It
runs where the job would start (code_dir, when that is here) with the job's env_vars, so relative
paths and `${oc.env:...}` resolve as in the job. A job whose environment or paths exist only on the
cluster (a container image, an ssh tunnel) cannot be checked here: the launcher then refuses unless
told `--no-train-check`.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from srpo_megatron.launch.config import LaunchConfig, LaunchConfigError

_CHECK_TIMEOUT_S = 300  # imports torch and transformers: seconds, not minutes, on a login node


def training_python(cfg: LaunchConfig, explicit: str | None) -> str:
    """The interpreter with the training stack that checks the trainer config."""
    if explicit:
        if not os.access(explicit, os.X_OK):
            raise LaunchConfigError(f"--train-python {explicit!r} is not an executable on this machine")
        return explicit
    if cfg.python_env:
        candidate = Path(cfg.python_env).expanduser().resolve() / "bin" / "python"
        if candidate.is_file():
            return str(candidate)
    where = f"python_env {cfg.python_env!r} is not on this machine" if cfg.python_env else "python_env is not set"
    raise LaunchConfigError(
        f"cannot validate train_config {cfg.train_config!r} here: {where}, and this launcher's "
        "environment has no torch. Pass --train-python <training venv>/bin/python, or --no-train-check "
        "to submit unchecked (a bad trainer config then fails only when the job starts)"
    )


def job_directory(cfg: LaunchConfig) -> Path:
    """Where the job's ranks start, when that is on this machine; else the launch directory (the
    repository, which the git packager ships and relative train_config paths refer to)."""
    if cfg.packager == "none" and cfg.code_dir:
        code_dir = Path(cfg.code_dir).expanduser().resolve()
        if code_dir.is_dir():
            return code_dir
    return Path.cwd()


def check_train_config(cfg: LaunchConfig, extra_overrides: list[str], python: str) -> None:
    """Run the trainer's own config check; raise LaunchConfigError with its message on failure."""
    cwd = job_directory(cfg)
    if not (cwd / cfg.train_config).is_file():
        raise LaunchConfigError(f"train_config: {cfg.train_config!r} does not exist (looked in {cwd})")
    overrides = [*cfg.overrides, *extra_overrides]
    command = [python, "-m", "srpo_megatron.train", "--check-config", "--config", cfg.train_config, *overrides]
    try:
        proc = subprocess.run(command, cwd=cwd, env={**os.environ, **cfg.env_vars}, capture_output=True,
                              text=True, timeout=_CHECK_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise LaunchConfigError(f"checking train_config with {python} failed: {err}") from err
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"]
        errors = [line for line in lines if line.startswith("config error: ")]
        detail = errors[-1].removeprefix("config error: ") if errors else "\n".join(lines[-15:])
        raise LaunchConfigError(f"train_config {cfg.train_config} (overrides {overrides}): {detail}")
