"""A PP=2 policy update equals the PP=1 update on the same data (loss and gradients)."""

import dataclasses
from pathlib import Path

import torch

from srpo_megatron import platform


def update_rank(hf_dir: str, pipeline_parallel: int, out_file: str) -> None:
    from transformers import AutoConfig

    from srpo_megatron.algorithms import PolicyLossConfig
    from srpo_megatron.config import ModelConfig, OptimizerConfig
    from srpo_megatron.models import model_shape, padded_vocab_size
    from srpo_megatron.models.forward import compute_logprobs
    from srpo_megatron.policy import UpdateSettings, build_policy, update_policy
    from srpo_megatron.rollout.batch import RolloutBatch
    from srpo_megatron.rollout.weight_sync import iter_full_hf_weights

    ctx = platform.init_distributed(1, pipeline_parallel, seed=0)
    shape = model_shape(AutoConfig.from_pretrained(hf_dir))
    vocab = padded_vocab_size(shape.vocab_size, 1)
    model, optimizer = build_policy(shape, ModelConfig(hf_path=hf_dir, pipeline_parallel=pipeline_parallel),
                                    OptimizerConfig(lr=1e-3, clip_grad=0.0), vocab)
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, shape.vocab_size, (8, 20), generator=gen)
    mask = torch.zeros(8, 20, dtype=torch.bool)
    for row in range(8):
        mask[row, 6: 10 + row] = True  # responses of different lengths after a 6-token prompt
    no = torch.zeros(8, dtype=torch.bool)  # no sample truncated or unscored
    batch = RolloutBatch(tokens, mask, torch.zeros(8, 20), torch.zeros(8), no, no, group_size=4,
                         advantages=torch.randn(8, generator=gen))
    plan = batch.plan(range(8), 4)
    old = compute_logprobs(model.module, batch.gather(plan, ("tokens",)), shape.vocab_size)
    if old:  # ratios != 1 so clipping paths run
        batch = dataclasses.replace(batch, old_logprobs=batch.scatter(plan, old) - 0.05 * mask)
    settings = UpdateSettings(updates_per_step=1, micro_batch_size=4, lr=1e-3, vocab_size=shape.vocab_size,
                              temperature=1.0, loss=PolicyLossConfig())
    metrics, _ = update_policy(model, optimizer, batch, settings)
    with torch.no_grad():  # stream the gradients through the weight-sync path: HF names, all stages
        for param in model.module.parameters():
            param.copy_(param.main_grad)
        grads = {name: t.clone() for name, t in iter_full_hf_weights(model.module, shape, vocab)}
    if ctx.is_last_pp_stage:
        torch.save({"loss": metrics["loss"], "grads": grads}, out_file)


def test_pp2_update_equals_pp1(tiny_qwen, tmp_path):
    platform.spawn(update_rank, 1, str(tiny_qwen), 1, str(tmp_path / "pp1.pt"))
    platform.spawn(update_rank, 2, str(tiny_qwen), 2, str(tmp_path / "pp2.pt"))
    pp1, pp2 = torch.load(tmp_path / "pp1.pt"), torch.load(tmp_path / "pp2.pt")
    assert abs(pp1["loss"] - pp2["loss"]) < 1e-6 and pp1["loss"] != 0.0
    assert pp1["grads"].keys() == pp2["grads"].keys()
    for name, grad in pp1["grads"].items():
        scale = grad.abs().max().clamp(min=1e-8)
        assert ((grad - pp2["grads"][name]).abs().max() / scale) < 1e-4, name
    assert any(g.abs().max() > 0 for g in pp1["grads"].values())
