"""End-to-end SRPO runs of the tiny model under torchrun (2 ranks, CPU): metrics and exact resume."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from srpo_megatron.checkpoint import COMPLETE, latest_checkpoint

REQUIRED_METRICS = [
    "step", "stage", "reward_mean", "accuracy", "accuracy/math", "accuracy/code", "accuracy/revisited",
    "revisited_frac", "response_len_mean", "truncated_frac", "clip_frac", "kl", "entropy", "zero_adv_frac",
    "groups", "informative_groups", "rollouts", "rollouts_total", "pool_size", "reflection_rate",
    "logprob_diff", "logprob_diff_mean", "t_rollout", "t_sync", "t_train", "t_reward", "t_step", "tokens_per_s",
]
PROMPTS, G = 4, 4  # prompts per step (both DP replicas together), rollouts per prompt


def _write_data(root: Path) -> None:
    with open(root / "math.jsonl", "w") as f:
        for i in range(12):
            a, b = i % 5 + 1, i % 3 + 2
            f.write(json.dumps({"id": f"m{i}", "prompt": f"What is {a} + {b}?", "answer": str(a + b)}) + "\n")
    with open(root / "code.jsonl", "w") as f:
        for i in range(2):  # one code epoch per stage-2 step: step 4 revisits step 3's prompts
            tests = {"fn_name": "add", "inputs": [[1, 2], [i, 4]], "outputs": [3, i + 4]}
            f.write(json.dumps({"id": f"c{i}", "prompt": "Write add(a, b).", "tests": tests}) + "\n")


def _config(root: Path, hf_dir: Path) -> Path:
    text = f"""
model: {{hf_path: {hf_dir}}}
data: {{math: [{root}/math.jsonl], code: [{root}/code.jsonl], prompts_per_step: 4}}
stages:
  - {{name: stage1_math, mixture: {{math: 1.0}}, steps: 2}}
  - {{name: stage2_mixed, mixture: {{math: 0.5, code: 0.5}}, steps: 2}}
rollout: {{n_samples_per_prompt: 4, max_response_tokens: 12, max_model_len: 256,
          cpu_kvcache_space_gib: 0.25, dtype: float32, enforce_eager: true}}
reward: {{format_weight: 0.5}}
optimizer: {{lr: 1.0e-3}}
training: {{steps: 4, micro_batch_size: 4, save_every: 2, reference_model: true}}
"""
    path = root / "config.yaml"
    path.write_text(text)
    return path


def _torchrun(config: Path, run_dir: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "srpo_megatron.train",
           "--config", str(config), f"training.run_dir={run_dir}", *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})


def _metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_qwen):
    root = tmp_path_factory.mktemp("trainer")
    _write_data(root)
    return root, _config(root, tiny_qwen)


@pytest.fixture(scope="module")
def full_run(setup):
    root, config = setup
    run_dir = root / "full"
    proc = _torchrun(config, run_dir)
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out[-4000:]
    (run_dir / "output.log").write_text(out)
    return run_dir


def test_run_logs_every_metric_and_checkpoints(full_run):
    metrics = _metrics(full_run)
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]
    for line in metrics:
        missing = [k for k in REQUIRED_METRICS if k not in line]
        assert not missing, missing
        assert line["logprob_diff"] < 1e-3  # vLLM and Megatron are the same policy after each sync
    assert [m["stage"] for m in metrics] == ["stage1_math"] * 2 + ["stage2_mixed"] * 2
    assert metrics[0]["accuracy/code"] is None and metrics[3]["accuracy/code"] is not None
    assert latest_checkpoint(full_run).name == "step_000004"
    assert (full_run / "tensorboard").is_dir()


def test_metrics_cover_both_replicas(full_run):
    metrics = _metrics(full_run)
    for step, line in enumerate(metrics, start=1):
        # each of the 2 DP replicas trains on 2 of the 4 groups: a rank-local count would say 2
        assert line["groups"] == PROMPTS and line["rollouts"] == PROMPTS * G
        assert line["informative_groups"] == round(PROMPTS * (1 - line["zero_adv_frac"]))
        assert line["rollouts_total"] == step * PROMPTS * G
    # stage 2 serves both code prompts every step, so step 4 revisits step 3's (epoch 0) prompts;
    # math (12 prompts, 2 per step) is never revisited in this run
    assert [m["revisited_frac"] for m in metrics] == [0.0, 0.0, 0.0, 0.5]
    assert [m["accuracy/revisited"] for m in metrics[:3]] == [None] * 3
    assert metrics[3]["accuracy/revisited"] == pytest.approx(metrics[3]["accuracy/code"])


def test_rotary_reload_warning_is_silenced(full_run):
    out = (full_run / "output.log").read_text()
    assert "srpo rank 0/2" in out  # the log holds the run's output
    assert "Failed to load weights" not in out  # vLLM logs it after every weight sync otherwise


def _command(process: psutil.Process) -> str:
    """Its command line; "" once it has exited (short-lived helpers may, while we look)."""
    try:
        return " ".join(process.cmdline())
    except psutil.Error:
        return ""


def test_kill_9_then_resume_reproduces_the_run(setup, full_run):
    root, config = setup
    run_dir = root / "killed"
    proc = _torchrun(config, run_dir)
    deadline = time.time() + 900
    while not (len(_metrics(run_dir)) >= 3 and latest_checkpoint(run_dir)) and proc.poll() is None:
        assert time.time() < deadline
        time.sleep(0.2)
    helpers = psutil.Process(proc.pid).children(recursive=True)  # ranks and what they started
    assert any("multiprocessing" in _command(p) for p in helpers)  # megatron's checkpoint Manager
    os.killpg(proc.pid, signal.SIGKILL)  # no clean-up of any kind
    proc.wait()
    _, alive = psutil.wait_procs(helpers, timeout=30)
    assert not alive, [_command(p)[:120] for p in alive]  # nothing outlives the killed run
    assert latest_checkpoint(run_dir).name == "step_000002"
    resumed = _torchrun(config, run_dir, "--resume", "auto")
    out, _ = resumed.communicate(timeout=900)
    assert resumed.returncode == 0, out[-4000:]
    reference, resumed = _metrics(full_run), _metrics(run_dir)
    assert [m["step"] for m in resumed] == [1, 2, 3, 4]  # each step once: replayed step 3 not doubled
    for ref, got in zip(reference, resumed):
        assert ref.keys() == got.keys()
        for key in ref.keys() - {k for k in ref if k.startswith("t_") or k == "tokens_per_s"}:
            a, b = ref[key], got[key]
            assert a == b or abs(a - b) < 1e-4, (ref["step"], key, a, b)


def test_interrupted_checkpoint_is_never_loaded(tmp_path):
    root = tmp_path / "checkpoints"
    (root / "step_000002").mkdir(parents=True)
    (root / "step_000002" / COMPLETE).write_text("2")
    (root / "step_000004.tmp").mkdir()  # crashed while writing
    (root / "step_000006").mkdir()  # renamed but marker missing (torn copy)
    assert latest_checkpoint(tmp_path).name == "step_000002"


def test_plot_tool_writes_png(full_run, tmp_path):
    from tools.plot_metrics import plot

    out = plot(full_run / "metrics.jsonl", tmp_path / "m.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_tool_draws_sparse_held_out_curves(tmp_path):
    from tools.plot_metrics import DEFAULT_KEYS, plot

    assert {"eval/accuracy/math", "eval/accuracy/code", "accuracy/revisited", "informative_groups",
            "pool_size", "rollouts_total"} <= set(DEFAULT_KEYS)
    lines = [{"step": 0, "stage": "s", "eval/accuracy/math": 0.1}]  # the baseline: held-out only
    lines += [{"step": s, "stage": "s", "accuracy": 0.5, "accuracy/revisited": 0.2 if s > 2 else None,
               "rollouts_total": 16 * s, **({"eval/accuracy/math": 0.3} if s % 2 == 0 else {})}
              for s in range(1, 5)]
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert plot(path, tmp_path / "m.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_dapo_dynamic_sampling_draws_extra_prompts(setup, tmp_path):
    root, config = setup
    run_dir = tmp_path / "dapo"
    proc = _torchrun(config, run_dir, "training.sampler=dynamic_sampling",
                     "training.steps=1", "training.save_every=0", "training.dynamic_sampling_rounds=2")
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out[-4000:]
    (metrics,) = _metrics(run_dir)
    base = 4 * 4  # prompts_per_step x G
    # either every trained group has mixed rewards, or the filter used its extra draws to look for them
    assert metrics["zero_adv_frac"] == 0.0 or metrics["rollouts"] == base * 3, metrics
    assert metrics["rollouts"] >= base
