"""Check a Megatron checkpoint against its HF original: same tokens, compare logits."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from srpo_megatron.convert.mcore_io import CheckpointInfo, load_model
from srpo_megatron.models.forward import gather_vocab, run_pipeline


def megatron_logits_rank(ckpt_dir: str, tensor_parallel: int, pipeline_parallel: int,
                         tokens_path: str, result_path: str) -> None:
    """One rank: load the checkpoint at (TP, PP), run the tokens, save the full logits (one rank)."""
    from megatron.core import parallel_state
    from transformers import AutoConfig

    from srpo_megatron import platform
    from srpo_megatron.convert.mcore_io import hf_config_dir
    from srpo_megatron.models import build_model, model_shape

    ctx = platform.init_distributed(tensor_parallel, pipeline_parallel)
    shape = model_shape(AutoConfig.from_pretrained(hf_config_dir(ckpt_dir)))
    info = CheckpointInfo.read(ckpt_dir)
    model = build_model(shape, tensor_parallel, pipeline_parallel, info.dtype, trainable=False,
                        vocab_size_padded=info.vocab_size_padded, initialize=False)
    load_model(model, ckpt_dir)
    tokens = torch.load(tokens_path).to(platform.device())

    def keep_logits(batch, output):
        logits = gather_vocab(output)[..., : shape.vocab_size].float().cpu()
        return output.sum() * 0.0, {"logits": logits}

    outputs = run_pipeline(model, [{"tokens": tokens}], keep_logits, forward_only=True)
    if ctx.is_last_pp_stage and parallel_state.get_tensor_model_parallel_rank() == 0 and ctx.dp_rank == 0:
        torch.save(outputs[0]["logits"], result_path)


def hf_logits(hf_dir: str | Path, tokens: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=dtype)
    model.eval()
    with torch.no_grad():
        return model(tokens).logits.float()


def verify(hf_dir: str | Path, ckpt_dir: str | Path, tensor_parallel: int, pipeline_parallel: int,
           batch: int = 2, seq_len: int = 32, seed: int = 0) -> dict:
    """Max |logit difference| between the HF model and the Megatron checkpoint at (TP, PP)."""
    from transformers import AutoConfig

    from srpo_megatron import platform
    from srpo_megatron.models import model_shape, validate_parallelism
    from srpo_megatron.models.hf_config import DTYPES

    shape = model_shape(AutoConfig.from_pretrained(hf_dir))
    validate_parallelism(shape, tensor_parallel, pipeline_parallel)
    info = CheckpointInfo.read(ckpt_dir)
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, shape.vocab_size, (batch, seq_len), generator=generator)
    with tempfile.TemporaryDirectory() as tmp:
        tokens_path, result_path = str(Path(tmp) / "tokens.pt"), str(Path(tmp) / "logits.pt")
        torch.save(tokens, tokens_path)
        platform.spawn(megatron_logits_rank, tensor_parallel * pipeline_parallel, str(ckpt_dir),
                       tensor_parallel, pipeline_parallel, tokens_path, result_path)
        megatron = torch.load(result_path)
    reference = hf_logits(hf_dir, tokens, DTYPES[info.dtype])
    return {
        "max_abs_logit_diff": (megatron - reference).abs().max().item(),
        "tp": tensor_parallel,
        "pp": pipeline_parallel,
        "dtype": info.dtype,
        "tokens": list(tokens.shape),
    }
