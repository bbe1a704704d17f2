"""Build a tiny Qwen2- (or Llama-) architecture model and a small byte-level BPE tokenizer, offline.

Used by the tests and the CPU demo: nothing is downloaded. head_dim is 64 because vLLM's CPU
attention does not support smaller heads.

    python tools/make_tiny_model.py --out .cache/tiny-qwen2 [--layers 2 --hidden 256 ...]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def _training_corpus() -> list[str]:
    """Text the tokenizer learns merges from: numbers, arithmetic, reasoning words and Python."""
    words = (
        "Solve the problem. Compute the value of the expression. The answer is "
        "Let me think step by step. Wait, let me check that again. Verify: so the result is "
        "Write a Python function that returns the sum of two numbers. Read input from stdin. "
        "<think> </think> \\boxed{ } Answer: def return print input int split for in range if else "
        "while True False None list dict str len sum max min sorted import sys map lambda"
    )
    lines = [words]
    for a in range(0, 100, 3):
        for b in range(0, 100, 7):
            lines.append(f"What is {a} + {b}? {a} + {b} = {a + b}. \\boxed{{{a + b}}}")
            lines.append(f"{a} * {b} = {a * b}; {a} - {b} = {a - b}")
    lines.append("def add(a, b):\n    return a + b\n\nprint(add(*map(int, input().split())))\n")
    return lines


def build_tokenizer(vocab_size: int):
    """Train a byte-level BPE tokenizer (any text encodes) with a Qwen-style chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_training_corpus(), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=CHAT_TEMPLATE,
        model_max_length=4096,
    )


def build_model_config(args: argparse.Namespace, tokenizer_len: int):
    from transformers import LlamaConfig, Qwen2Config

    vocab_size = args.vocab_size or tokenizer_len
    if vocab_size < tokenizer_len:
        raise ValueError(f"--vocab-size {vocab_size} is smaller than the tokenizer ({tokenizer_len})")
    common = dict(
        vocab_size=vocab_size,
        hidden_size=args.hidden,
        intermediate_size=args.ffn or 2 * args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=args.hidden // 64,
        num_key_value_heads=args.kv_heads,
        head_dim=64,
        max_position_embeddings=args.max_positions,
        rope_theta=args.rope_theta,
        rms_norm_eps=1e-6,
        tie_word_embeddings=args.tied,
        torch_dtype="float32",
        eos_token_id=None,
        bos_token_id=None,
    )
    if args.arch == "llama":
        return LlamaConfig(**common, attention_bias=False, mlp_bias=False)
    return Qwen2Config(**common, use_sliding_window=False)


def make_tiny_model(out: str | Path, **overrides) -> Path:
    """Programmatic entry point (tests): same arguments as the CLI, as keyword names."""
    args = _parser().parse_args([f"--out={out}"])
    for key, value in overrides.items():
        if not hasattr(args, key):
            raise TypeError(f"make_tiny_model got an unknown option {key!r}")
        setattr(args, key, value)
    return _build(args)


def _build(args: argparse.Namespace) -> Path:
    import torch
    from transformers import AutoModelForCausalLM

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(args.tokenizer_vocab)
    config = build_model_config(args, len(tokenizer))
    config.eos_token_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    config.pad_token_id = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    torch.manual_seed(args.seed)
    model = AutoModelForCausalLM.from_config(config).to(torch.float32)
    if args.bias_std > 0 and args.arch == "qwen2":  # random QKV biases, so layout bugs in the bias show up in tests
        with torch.no_grad():
            for layer in model.model.layers:
                for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                    proj.bias.normal_(0.0, args.bias_std)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    generation_config = {"eos_token_id": config.eos_token_id, "pad_token_id": config.pad_token_id}
    (out / "generation_config.json").write_text(json.dumps(generation_config, indent=2))
    return out


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output directory (HF format)")
    p.add_argument("--arch", choices=["qwen2", "llama"], default="qwen2")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--hidden", type=int, default=256, help="hidden size; heads = hidden / 64")
    p.add_argument("--ffn", type=int, default=0, help="intermediate size (default 2 x hidden)")
    p.add_argument("--kv-heads", dest="kv_heads", type=int, default=2)
    p.add_argument("--tokenizer-vocab", dest="tokenizer_vocab", type=int, default=1000)
    p.add_argument("--vocab-size", dest="vocab_size", type=int, default=0,
                   help="model vocabulary (default: the tokenizer's size); may exceed the tokenizer")
    p.add_argument("--tied", action=argparse.BooleanOptionalAction, default=False,
                   help="tie input embeddings and output layer")
    p.add_argument("--max-positions", dest="max_positions", type=int, default=2048)
    p.add_argument("--rope-theta", dest="rope_theta", type=float, default=1_000_000.0)
    p.add_argument("--bias-std", dest="bias_std", type=float, default=0.02)
    p.add_argument("--seed", type=int, default=0)
    return p


def main() -> None:
    path = _build(_parser().parse_args())
    print(path)


if __name__ == "__main__":
    main()
