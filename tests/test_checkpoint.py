"""Checkpoints and resume: only completed checkpoints count, damage is named and skipped, missing
state is an error, and a resumed run's metrics hold every step once."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from srpo_megatron import platform
from srpo_megatron.checkpoint import COMPLETE, complete_checkpoints, latest_checkpoint
from srpo_megatron.metrics import MetricsLogger


def test_tmp_directory_with_marker_is_not_a_checkpoint(tmp_path):
    root = tmp_path / "checkpoints"
    for name in ("step_000002", "step_000004.tmp", "step_000005.bak", "step_x"):
        (root / name).mkdir(parents=True)
        (root / name / COMPLETE).write_text("{}")  # a crash after the marker, before the rename
    (root / "step_000006").mkdir()  # renamed but marker missing (torn copy)
    assert latest_checkpoint(tmp_path).name == "step_000002"  # was: ValueError invalid literal for int()
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["step_000002"]
    assert latest_checkpoint(tmp_path / "nothing-here") is None


def resume_rank(hf_dir: str, run_dir: str, out_file: str) -> None:
    """Save steps 1 and 2, then damage them one way after another and resume each time."""
    import torch.distributed as dist
    from transformers import AutoConfig

    from srpo_megatron.checkpoint import (DamagedCheckpoint, MissingState, ResumeRequest, resume_checkpoint,
                                          save_checkpoint)
    from srpo_megatron.config import ModelConfig, OptimizerConfig
    from srpo_megatron.convert.mcore_io import CheckpointInfo
    from srpo_megatron.models import model_shape, padded_vocab_size
    from srpo_megatron.policy import build_policy

    platform.init_distributed(1, 1, seed=0)
    rank = dist.get_rank()
    shape = model_shape(AutoConfig.from_pretrained(hf_dir))
    vocab = padded_vocab_size(shape.vocab_size, 1)
    model, optimizer = build_policy(shape, ModelConfig(hf_path=hf_dir), OptimizerConfig(lr=1e-4), vocab)
    module = model.module
    param = next(module.parameters())
    info = CheckpointInfo(vocab, "float32", 1, 1)
    ckpts = Path(run_dir) / "checkpoints"
    results: dict = {}

    def save(step: int) -> Path:
        return save_checkpoint(run_dir, step, module, optimizer, {"step": step}, info, hf_dir)

    def resume(source="auto", fresh_rng=False):
        with torch.no_grad():
            param.fill_(-7.0)  # whatever is loaded must overwrite this
        try:
            state = resume_checkpoint(run_dir, ResumeRequest(source, fresh_rng), module, optimizer)
        except (DamagedCheckpoint, MissingState) as err:
            return {"error": type(err).__name__, "message": str(err)}
        return {"step": state["step"], "param": param.flatten()[0].item(), "rand": torch.rand(1).item()}

    def on_rank0(fn) -> None:
        dist.barrier()  # every rank is done with the files before they change
        if rank == 0:
            fn()
        dist.barrier()

    results["fresh"] = resume_checkpoint(run_dir, "auto", module, optimizer)  # nothing saved yet: None
    optimizer.step()  # zero gradients: creates Adam's moments, which every trainer checkpoint holds
    save(1)
    results["param1"] = param.flatten()[0].item()
    with torch.no_grad():
        param.add_(1.0)
    save(2)
    results["param2"], results["rand2"] = param.flatten()[0].item(), torch.rand(1).item()
    # a crash after writing the marker into the .tmp, before the rename
    on_rank0(lambda: shutil.copytree(ckpts / "step_000002", ckpts / "step_000003.tmp"))
    results["intact"] = resume()

    rng1 = ckpts / "step_000002" / "rng_rank1.pt"
    on_rank0(lambda: rng1.rename(rng1.with_suffix(".moved")))
    results["missing_rng"] = resume()
    results["missing_rng_fresh"] = resume(fresh_rng=True)
    on_rank0(lambda: rng1.with_suffix(".moved").rename(rng1))

    shard = sorted((ckpts / "step_000002").glob("*.distcp"))[-1]
    on_rank0(lambda: shard.write_bytes(shard.read_bytes()[:100]))  # truncated shard
    results["truncated_shard"] = resume()
    results["truncated_explicit"] = resume(str(ckpts / "step_000002"))

    state1 = ckpts / "step_000001" / "trainer_state.json"
    on_rank0(lambda: state1.write_text(state1.read_text()[:5]))  # torn trainer state
    results["all_damaged"] = resume()

    save(4)  # a new save removes interrupted ones
    results["tmp_left"] = sorted(p.name for p in ckpts.glob("*.tmp"))
    if rank == 0:
        Path(out_file).write_text(json.dumps(results))


@pytest.fixture(scope="module")
def resumes(tiny_qwen, tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    platform.spawn(resume_rank, 2, str(tiny_qwen), str(root / "run"), str(root / "out.json"))
    return json.loads((root / "out.json").read_text())


def test_resume_is_exact_and_ignores_tmp(resumes):
    assert resumes["fresh"] is None
    intact = resumes["intact"]
    assert intact["step"] == 2  # not the .tmp "step 3"
    assert intact["param"] == resumes["param2"] and intact["rand"] == resumes["rand2"]


def test_missing_rng_file_is_an_error_unless_asked(resumes):
    missing = resumes["missing_rng"]
    assert missing["error"] == "MissingState", missing  # was: skipped without a word
    assert "rng_rank1.pt" in missing["message"] and "--resume-fresh-rng" in missing["message"]
    fresh = resumes["missing_rng_fresh"]
    assert fresh["step"] == 2 and fresh["param"] == resumes["param2"]


def test_damaged_checkpoint_is_named_and_skipped(resumes):
    fallback = resumes["truncated_shard"]
    assert fallback["step"] == 1 and fallback["param"] == resumes["param1"]  # the previous good one
    explicit = resumes["truncated_explicit"]
    assert explicit["error"] == "DamagedCheckpoint" and "step_000002" in explicit["message"]
    assert "distcp" in explicit["message"]  # names the file
    none_left = resumes["all_damaged"]
    assert none_left["error"] == "DamagedCheckpoint", none_left
    assert "no usable checkpoint" in none_left["message"] and "trainer_state.json" in none_left["message"]
    assert resumes["tmp_left"] == []


def _steps(run_dir: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_resumed_logger_keeps_each_step_once(tmp_path):
    first = MetricsLogger(tmp_path)
    for step in range(5):  # steps 0..4; the checkpoint the next run resumes from is step 2
        first.log({"step": step, "reward_mean": float(step)})
    first.close()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "rew')  # killed mid-line
    resumed = MetricsLogger(tmp_path)
    for step in (3, 4, 5):
        resumed.log({"step": step, "reward_mean": 10.0 + step})
    resumed.close()
    assert _steps(tmp_path) == [0, 1, 2, 3, 4, 5]  # was: 0..4, a torn line, then 3..5 again
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [m["reward_mean"] for m in lines[3:]] == [13.0, 14.0, 15.0]  # the resumed run's values

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    scalars = [(e.step, e.value) for e in events.Scalars("reward_mean")]
    assert scalars == [(0, 0.0), (1, 1.0), (2, 2.0), (3, 13.0), (4, 14.0), (5, 15.0)]


def test_fresh_logger_starts_a_new_log(tmp_path):
    old = MetricsLogger(tmp_path)
    old.log({"step": 0, "x": 1})
    old.log({"step": 1, "x": 1})
    old.close()
    new = MetricsLogger(tmp_path)
    new.log({"step": 0, "x": 2})
    new.close()
    assert _steps(tmp_path) == [0]
