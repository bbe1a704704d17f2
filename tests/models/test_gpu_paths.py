"""GPU-only paths: Transformer Engine layers and NCCL. Marked `gpu`; skipped without CUDA."""

import pytest

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
