"""A whole `train_step` of the tiny model: the named phases, the typed host-resident batch, the
step's metrics, checkpoint save and load, and the weight stream into an HF-layout sink.

Generation is replaced by recorded rollouts (`RecordedEngine`) only because vLLM's CUDA build
cannot be installed on the GPU test machine; everything after it (scoring, advantages, Megatron
log-probs, the update, metrics, the sync stream, checkpoints) is the real code. The same test
runs on CPU (gloo and the compatibility layer) and, marked `gpu`, on CUDA at TP=1 and at TP=2
where two GPUs exist.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from srpo_megatron import platform

PROMPTS, G = 2, 4
PHASES = ["t_rollout", "t_reward", "t_record_history", "t_advantages", "t_old_logprobs", "t_ref_logprobs",
          "t_update", "t_sync"]


class RecordedEngine:
    """The rollout engine's interface over fixed responses: sample j of every prompt answers
    `\\boxed{j}`, so groups have mixed rewards. Weight syncs land in `weights` (HF names)."""

    def __init__(self, hf_dir: str) -> None:
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(hf_dir)
        self.weights: dict[str, torch.Tensor] = {}

    def generate(self, texts, n=None):
        from srpo_megatron.rollout import Rollout

        rollouts = []
        for p, text in enumerate(texts):
            prompt = self.tokenizer.encode(text)
            for j in range(n or G):
                response = f"Let me check. \\boxed{{{j}}}"
                ids = self.tokenizer.encode(response) + [self.tokenizer.eos_token_id]
                rollouts.append(Rollout(p, j, prompt, ids, response, torch.zeros(len(ids)), "stop"))
        return rollouts

    def load_weights(self, bucket) -> None:
        self.weights.update({name: tensor.detach().cpu().clone() for name, tensor in bucket})

    def wake_up(self, tags=None) -> None:
        pass

    def sleep(self, level=1) -> None:
        pass

    def shutdown(self) -> None:
        pass


def _config(hf_dir: str, data_dir: str, run_dir: str, tp: int, reference_model: bool = True):
    from srpo_megatron.config import DataConfig, ModelConfig, OptimizerConfig, TrainConfig, TrainingConfig
    from srpo_megatron.data import StageConfig
    from srpo_megatron.rollout import RolloutConfig

    return TrainConfig(
        model=ModelConfig(hf_path=hf_dir, tensor_parallel=tp),
        data=DataConfig(math=[str(Path(data_dir) / "math.jsonl")], prompts_per_step=PROMPTS),
        stages=[StageConfig("math", {"math": 1.0}, steps=10)],
        rollout=RolloutConfig(n_samples_per_prompt=G, max_response_tokens=12, max_model_len=256),
        optimizer=OptimizerConfig(lr=1e-3),
        training=TrainingConfig(run_dir=run_dir, steps=2, micro_batch_size=4, reference_model=reference_model))


def step_rank(hf_dir: str, data_dir: str, run_dir: str, tp: int, out_file: str) -> None:
    from srpo_megatron.convert.hf_io import HFWeights
    from srpo_megatron.rollout.batch import RolloutBatch
    from srpo_megatron.trainer import Trainer

    batches = []

    class Recording(Trainer):
        def ref_logprobs(self, batch: RolloutBatch) -> RolloutBatch:  # the last phase before the update
            batches.append(super().ref_logprobs(batch))
            return batches[-1]

    config = _config(hf_dir, data_dir, run_dir, tp)
    engine = RecordedEngine(hf_dir)
    trainer = Recording(config, engine=engine)
    metrics = trainer.train_step()
    saved = trainer.save()
    trainer.close()
    batch = batches[0]
    tensors = {name: getattr(batch, name) for name in ("tokens", "mask", "rollout_logprobs", "rewards",
                                                        "truncated", "advantages", "old_logprobs", "ref_logprobs")}
    initial = HFWeights(hf_dir)
    resumed_engine = RecordedEngine(hf_dir)
    resumed = Trainer(config, resume=str(saved), engine=resumed_engine)  # loads the checkpoint, then syncs
    result = {
        "metrics": metrics,
        "devices": {name: (t.device.type if t is not None else None) for name, t in tensors.items()},
        "shapes_match": tensors["old_logprobs"] is not None
        and tensors["old_logprobs"].shape == tensors["tokens"].shape == tensors["ref_logprobs"].shape,
        "informative": bool(tensors["advantages"].abs().sum() > 0),
        "sink": {name: list(t.shape) for name, t in engine.weights.items()},
        "hf": {name: list(initial.get(name).shape) for name in engine.weights},
        "moved": max((t - initial.get(name).to(t.dtype)).abs().max().item() for name, t in engine.weights.items()),
        "resumed_step": resumed.step,
        "resumed_equal": sorted(resumed_engine.weights) == sorted(engine.weights) and all(
            torch.equal(resumed_engine.weights[n], engine.weights[n]) for n in engine.weights),
    }
    resumed.close()
    if torch.distributed.get_rank() == 0:
        Path(out_file).write_text(json.dumps(result))


def on_policy_rank(hf_dir: str, data_dir: str, run_dir: str, out_file: str) -> None:
    from srpo_megatron.trainer import Trainer

    trainer = Trainer(_config(hf_dir, data_dir, run_dir, tp=1, reference_model=False), engine=RecordedEngine(hf_dir))
    forwards = []
    trainer.model.module.register_forward_pre_hook(lambda module, args: forwards.append(args[0].shape))
    metrics = trainer.train_step()
    trainer.close()
    Path(out_file).write_text(json.dumps({"metrics": metrics, "forwards": len(forwards)}))


def _write_data(root: Path) -> None:
    with open(root / "math.jsonl", "w") as f:
        for i in range(6):
            f.write(json.dumps({"id": f"m{i}", "prompt": f"What is {i % G} + 0?", "answer": str(i % G)}) + "\n")


def _run(hf_dir, tmp_path: Path, tp: int) -> dict:
    _write_data(tmp_path)
    out = tmp_path / "result.json"
    platform.spawn(step_rank, tp, str(hf_dir), str(tmp_path), str(tmp_path / "run"), tp, str(out))
    return json.loads(out.read_text())


def _check(result: dict, hf_names: set[str]) -> None:
    metrics = result["metrics"]
    # every phase separately timed; t_train is the log-prob and update phases together
    assert all(metrics[k] >= 0 for k in PHASES), metrics
    assert metrics["t_train"] == pytest.approx(
        metrics["t_old_logprobs"] + metrics["t_ref_logprobs"] + metrics["t_update"], abs=1e-3)
    assert metrics["t_step"] >= sum(metrics[k] for k in PHASES) - 1e-3
    # the batch: typed, on the host whatever the device, every phase's field filled in
    assert set(result["devices"].values()) == {"cpu"}, result["devices"]
    assert result["shapes_match"] and result["informative"]
    # the step's metrics: every group, every rollout, accuracy 1/G (sample j answers j)
    assert metrics["groups"] == PROMPTS and metrics["rollouts"] == PROMPTS * G
    assert metrics["accuracy"] == pytest.approx(1 / G) and metrics["informative_groups"] == PROMPTS
    assert metrics["loss"] == metrics["loss"] and metrics["grad_norm"] > 0  # finite, and it trained
    assert metrics["kl"] == pytest.approx(0.0, abs=1e-6)  # reference == policy before the update
    # the sync streamed every HF tensor, in HF layout, with the updated weights
    assert set(result["sink"]) == hf_names and result["sink"] == result["hf"]
    assert result["moved"] > 0
    # checkpoint load restores the step and the weights, which the resumed sync streams again
    assert result["resumed_step"] == 1 and result["resumed_equal"]


def _hf_names(hf_dir) -> set[str]:
    from safetensors import safe_open

    with safe_open(str(Path(hf_dir) / "model.safetensors"), "pt") as f:
        return set(f.keys())


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CUDA variants below cover this machine")
def test_train_step_on_cpu(tiny_qwen, tmp_path):
    _check(_run(tiny_qwen, tmp_path, tp=1), _hf_names(tiny_qwen))


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU run of the trainer")
def test_on_policy_step_skips_the_old_logprob_pass(tiny_qwen, tmp_path):
    """One update, no reference model: the update's forward is the only one, and the
    vLLM-vs-Megatron log-prob difference still comes from it."""
    _write_data(tmp_path)
    out = tmp_path / "result.json"
    platform.spawn(on_policy_rank, 1, str(tiny_qwen), str(tmp_path), str(tmp_path / "run"), str(out))
    result = json.loads(out.read_text())
    metrics = result["metrics"]
    assert result["forwards"] == PROMPTS * G // 4  # the update's micro-batches, nothing else
    assert "t_old_logprobs" not in metrics and "t_ref_logprobs" not in metrics
    # RecordedEngine reports log-prob 0 for every token: the difference is -(Megatron's log-prob)
    assert metrics["logprob_diff"] > 0 and metrics["logprob_diff_mean"] > 0
    assert metrics["clip_frac"] == 0.0 and metrics["ratio_mean"] == pytest.approx(1.0)
    assert 0.0 <= metrics["pad_frac"] < 1.0 and metrics["grad_norm"] > 0


@pytest.mark.gpu
@pytest.mark.parametrize("tp", [1, 2])
def test_train_step_on_cuda(tiny_qwen, tmp_path, tp):
    if torch.cuda.device_count() < tp:
        pytest.skip(f"TP={tp} needs {tp} GPUs")
    _check(_run(tiny_qwen, tmp_path, tp=tp), _hf_names(tiny_qwen))
