"""Launch-config loading and validation: every error names the field (and the fix)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from srpo_megatron.launch.config import LaunchConfigError, load_launch_config

REPO = Path(__file__).resolve().parents[2]
SSH_ENV = {
    "SLURM_ACCOUNT": "acct",
    "SLURM_HOST": "login",
    "SLURM_USER": "me",
    "SLURM_JOB_DIR": "/lustre/jobs",
}

BASE = {
    "name": "t",
    "executor": "slurm",
    "train_config": "examples/tiny_cpu/config.yaml",
    "nodes": 2,
    "slurm": {"account": "a", "tunnel": {"kind": "local"}},
}


def _write(tmp_path: Path, cfg: dict) -> Path:
    path = tmp_path / "launch.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _with(**changes) -> dict:
    """BASE with dotted keys replaced (None deletes the key)."""
    cfg = yaml.safe_load(yaml.safe_dump(BASE))
    for dotted, value in changes.items():
        *parents, leaf = dotted.split("__")
        node = cfg
        for part in parents:
            node = node.setdefault(part, {})
        if value is None:
            node.pop(leaf, None)
        else:
            node[leaf] = value
    return cfg


def test_examples_load(monkeypatch):
    for key, value in SSH_ENV.items():
        monkeypatch.setenv(key, value)
    for path in (
        "qwen2.5-7b/launch.yaml",
        "qwen2.5-32b/launch.yaml",
        "tiny_cpu/launch_slurm.yaml",
        "tiny_cpu/launch_local.yaml",
    ):
        cfg = load_launch_config(REPO / "examples" / path)
        assert cfg.train_config.startswith("examples/")
    big = load_launch_config(REPO / "examples/qwen2.5-32b/launch.yaml")
    assert (big.nodes, big.gpus_per_node, big.procs_per_node) == (4, 8, 8)
    assert big.slurm.account == "acct" and big.slurm.tunnel.host == "login"


def test_env_interpolation_default_and_override(tmp_path):
    path = _write(tmp_path, _with(slurm__container_image="${IMG:-default.sqsh}", slurm__account="${ACCT}"))
    assert load_launch_config(path, env={"ACCT": "x"}).slurm.container_image == "default.sqsh"
    cfg = load_launch_config(path, env={"ACCT": "x", "IMG": "nvcr.io/x:1"})
    assert (cfg.slurm.account, cfg.slurm.container_image) == ("x", "nvcr.io/x:1")


def test_set_overrides_nested_fields(tmp_path):
    cfg = load_launch_config(
        _write(tmp_path, BASE), sets=["slurm.tunnel.job_dir=/j", "nodes=3", "slurm.exclusive=false"]
    )
    assert (cfg.slurm.tunnel.job_dir, cfg.nodes, cfg.slurm.exclusive) == ("/j", 3, False)


@pytest.mark.parametrize(
    "changes, expected",
    [
        (
            {"slurm__account": "${NOPE_NOT_SET}"},
            r"slurm\.account: environment variable NOPE_NOT_SET is not set",
        ),
        ({"nodez": 2}, r"nodez: unknown field; valid fields: name, train_config, executor"),
        (
            {"slurm__tunnel__hots": "x"},
            r"slurm\.tunnel\.hots: unknown field; valid fields: kind, job_dir, host",
        ),
        ({"executor": "k8s"}, r"executor: unknown value 'k8s'; valid values: slurm, local"),
        ({"nodes": "four"}, r"nodes: expected an integer, got 'four'"),
        ({"nodes": 0}, r"nodes: must be at least 1 \(got 0\)"),
        ({"slurm__exclusive": "yes"}, r"slurm\.exclusive: expected true or false"),
        ({"train_config": None}, r"train_config: required field is missing"),
        (
            {"gpus_per_node": 8, "nproc_per_node": 4},
            r"nproc_per_node: .* must equal gpus_per_node \(got 4 and 8\)",
        ),
        ({"slurm__account": ""}, r"slurm\.account: required"),
        ({"slurm__time": "4 hours"}, r"slurm\.time: '4 hours' is not a Slurm time; write HH:MM:SS"),
        ({"slurm__container_mounts": ["/data"]}, r"slurm\.container_mounts\[0\]: '/data' is not SRC:DST"),
        (
            {"slurm__tunnel__kind": "ftp"},
            r"slurm\.tunnel\.kind: unknown value 'ftp'; valid values: local, ssh",
        ),
        ({"slurm": None}, r"slurm: required with executor: slurm"),
        ({"overrides": ["lr"]}, r"overrides\[0\]: 'lr' is not a key=value trainer override"),
        ({"packager": "git", "code_dir": "/x"}, r"code_dir: not used with packager: git"),
        (
            {"slurm__tunnel": {"kind": "ssh", "host": "h", "user": "u"}},
            r"slurm\.tunnel\.job_dir: required with kind: ssh",
        ),
        (
            {"slurm__tunnel": {"kind": "ssh", "host": "h", "user": "u", "job_dir": "/j"}, "code_dir": "repo"},
            r"code_dir: 'repo' must be an absolute path on the cluster",
        ),
        (
            {"slurm__tunnel": {"kind": "ssh", "host": "h", "user": "u", "job_dir": "/j"}},
            r"code_dir: required with packager: none",
        ),
        (
            {"executor": "local", "slurm": None},
            r"nodes: the local executor runs on this machine only \(got 2\)",
        ),
        ({"executor": "local", "nodes": 1}, r"slurm: only used with executor: slurm"),
    ],
)
def test_validation_names_the_field(tmp_path, changes, expected):
    path = _write(tmp_path, _with(**changes))
    with pytest.raises(LaunchConfigError, match=expected) as err:
        load_launch_config(path, env={})
    assert str(err.value).startswith(f"launch config {path}: ")


def test_bad_set_syntax_is_explained(tmp_path):
    with pytest.raises(LaunchConfigError, match=r"--set 'nodes': expected KEY=VALUE"):
        load_launch_config(_write(tmp_path, BASE), sets=["nodes"])


def test_cli_reports_config_errors_without_traceback(tmp_path):
    path = _write(tmp_path, _with(slurm__partition="${SRPO_TEST_UNSET_PARTITION}"))
    proc = subprocess.run(
        [sys.executable, "-m", "srpo_megatron.launch", "--config", str(path), "--dryrun"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "slurm.partition: environment variable SRPO_TEST_UNSET_PARTITION is not set" in proc.stderr
    assert "Traceback" not in proc.stderr
