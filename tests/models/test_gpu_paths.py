"""GPU-only paths: Transformer Engine layers and NCCL. Marked `gpu`; skipped without CUDA."""

import pytest
import torch

from srpo_megatron import platform
from srpo_megatron.convert.verify import verify

pytestmark = pytest.mark.gpu


def test_platform_picks_nccl_and_transformer_engine():
    from srpo_megatron.models.builder import transformer_engine_available

    assert platform.device().type == "cuda"
    assert transformer_engine_available(), "install transformer-engine[pytorch] (requirements-gpu.txt)"


@pytest.mark.parametrize("tp, pp", [(1, 1)])
def test_te_model_logits_match_hf(tiny_qwen, tmp_path, tp, pp):
    from srpo_megatron.convert.__main__ import main as convert_main

    assert convert_main(["hf-to-mcore", "--hf", str(tiny_qwen), "--out", str(tmp_path), "--tp", "1"]) == 0
    assert verify(tiny_qwen, tmp_path, tp, pp)["max_abs_logit_diff"] < 1e-3  # TF32/TE kernels on GPU


def packed_logprobs_rank(hf_dir: str, out_file: str) -> None:
    """Log-probs of one batch, padded and THD-packed (TE's attention on CUDA)."""
    from transformers import AutoConfig

    from srpo_megatron.config import ModelConfig, OptimizerConfig
    from srpo_megatron.models import model_shape, padded_vocab_size
    from srpo_megatron.models.forward import compute_logprobs
    from srpo_megatron.policy import build_policy
    from srpo_megatron.rollout.batch import RolloutBatch, Sample

    platform.init_distributed(1, 1, seed=0)
    shape = model_shape(AutoConfig.from_pretrained(hf_dir))
    vocab = padded_vocab_size(shape.vocab_size, 1)
    model, _ = build_policy(shape, ModelConfig(hf_path=hf_dir), OptimizerConfig(), vocab)
    gen = torch.Generator().manual_seed(0)
    samples = [Sample("math", 0, torch.randint(3, shape.vocab_size, (p,), generator=gen).tolist(),
                      torch.randint(3, shape.vocab_size, (r,), generator=gen).tolist(), [0.0] * r,
                      False, 0.0, 0.0, False, False) for p, r in [(5, 9), (3, 2), (7, 12), (4, 1), (6, 6), (2, 10)]]
    batch = RolloutBatch.pack(samples, group_size=2, rows_multiple=3)
    plan = batch.plan(range(batch.num_rows), 3)
    result = {"mask": batch.mask}
    for name, packed in (("padded", False), ("packed", True)):
        parts = compute_logprobs(model.module, batch.gather(plan, ("tokens",), packed), shape.vocab_size)
        result[name] = batch.scatter(plan, parts)
    torch.save(result, out_file)


def test_te_packed_logprobs_match_padded(tiny_qwen, tmp_path):
    platform.spawn(packed_logprobs_rank, 1, str(tiny_qwen), str(tmp_path / "out.pt"))
    result = torch.load(tmp_path / "out.pt")
    mask = result["mask"]
    assert (result["packed"][mask] - result["padded"][mask]).abs().max() < 1e-3  # TF32/TE kernels
