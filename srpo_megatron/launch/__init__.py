"""nemo-run launcher for SRPO training jobs (Slurm multi-node, or local torchrun).

Runs in its own virtualenv (.venv-launch: nemo-run + leptonai pin versions that conflict with
vLLM), so nothing here imports torch or the rest of srpo_megatron. `config` is pure Python;
`executors` and `submit` import nemo-run. CLI: `python -m srpo_megatron.launch --help`.
"""

from srpo_megatron.launch.config import LaunchConfig, LaunchConfigError, load_launch_config

__all__ = ["LaunchConfig", "LaunchConfigError", "load_launch_config"]
