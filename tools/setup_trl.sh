#!/usr/bin/env bash
# TRL's virtualenv (.venv-trl) for benchmarks/vs_trl.py, kept apart from the training environment
# because TRL pins its own transformers/accelerate. Not needed to train or to run the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv-trl/bin/python ] || "$PYTHON" -m venv .venv-trl
.venv-trl/bin/pip install -q --disable-pip-version-check -r requirements-trl.txt
echo "TRL environment ready: .venv-trl"
