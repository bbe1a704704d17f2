#!/usr/bin/env bash
# Install a Slurm controller + node daemon and munge from Debian (slurm-wlm 22.05 on bookworm), so
# tools/slurm/cluster.py can start a real 2-node cluster on this one machine for the launcher tests.
# Idempotent: does nothing when the daemons and client commands are already present. Needs root.
set -euo pipefail

required=(slurmctld slurmd sbatch srun sinfo squeue scontrol munged)
missing=0
for cmd in "${required[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || PATH="$PATH:/usr/sbin" command -v "$cmd" >/dev/null 2>&1 || missing=1
done
if [ "$missing" -eq 0 ]; then
  echo "slurm and munge already installed"
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "tools/slurm/install.sh must run as root (it uses apt-get)" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# slurm-wlm pulls slurmctld, slurmd and the client tools; munge authenticates them to each other;
# hostname provides the `hostname --ip-address` that nemo-run's sbatch script runs.
apt-get install -y -qq --no-install-recommends slurm-wlm munge hostname >/dev/null
dpkg-query -W slurm-wlm slurmctld slurmd munge
