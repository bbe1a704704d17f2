"""A tiny Qwen2 whose every sample is one fixed response: deterministic pass rates through vLLM.

The tiny model's attention and MLP outputs are zeroed, so each position's hidden state is the
embedding of its own token and the model is a bigram table. Embeddings and the output layer are set
so that the last token of the chat template's generation prompt is followed by the tokens of
`response`, then EOS, each with a logit margin of ~160: at temperature 1 no other token is ever
drawn. Needs the response's tokens to be distinct (a bigram chain cannot repeat a token).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer

_LOGIT = 10.0  # times the RMS-normalised one-hot (sqrt(hidden) = 16): a margin of 160


def make_oracle_model(tiny_dir: Path, out: Path, response: str) -> Path:
    shutil.copytree(tiny_dir, out, dirs_exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(out)
    generation_prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "x"}], tokenize=False, add_generation_prompt=True
    )
    start = tokenizer.encode(generation_prompt, add_special_tokens=False)[-1]
    chain = [start, *tokenizer.encode(response, add_special_tokens=False), tokenizer.eos_token_id]
    if len(set(chain[:-1])) != len(chain) - 1:
        raise ValueError(f"response {response!r} repeats a token; a bigram oracle cannot emit it")
    weights = load_file(str(out / "model.safetensors"))
    embed, head = weights["model.embed_tokens.weight"], weights["lm_head.weight"]
    if len(chain) > embed.shape[1]:
        raise ValueError(f"response {response!r} is longer than the hidden size")
    embed.zero_()
    head.zero_()
    for step, (current, following) in enumerate(zip(chain, chain[1:])):
        embed[current, step] = 1.0
        head[following, step] = _LOGIT
    for name, tensor in weights.items():
        if name.endswith(("self_attn.o_proj.weight", "mlp.down_proj.weight")):
            tensor.zero_()
    weights["model.norm.weight"] = torch.ones_like(weights["model.norm.weight"])
    save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out
