#!/usr/bin/env bash
# The whole test suite: training-stack tests in .venv, launcher tests (real local Slurm) in .venv-launch.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONWARNINGS=ignore
.venv/bin/python -m pytest tests -q --ignore=tests/launch "$@"
.venv-launch/bin/python -m pytest tests/launch -q "$@"
