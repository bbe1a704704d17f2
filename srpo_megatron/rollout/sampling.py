"""Sampling K responses per problem through the vLLM rollout engine, shared by evaluation and
difficulty grading: the model directory (HF or Megatron checkpoint), the engine's command-line
options, the per-domain instruction suffix, and batched generation with a progress bar.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Iterator, Sequence

from tqdm import tqdm

from srpo_megatron.rollout.types import Rollout, RolloutConfig

if TYPE_CHECKING:
    from srpo_megatron.rollout.engine import RolloutEngine

DEFAULT_INSTRUCTIONS = MappingProxyType({
    "math": "\nPlease reason step by step, and put your final answer within \\boxed{}.",
    "code": "\nWrite a complete Python 3 solution and put it in a single ```python code block.",
})
"""Appended to each problem before the chat template, the one default for training
(`data.<domain>_instruction`), evaluation and difficulty grading: it says where the rewards look
for the answer."""

CHECKPOINT_MARKER = "srpo_model.json"  # what `convert.mcore_io` writes into a Megatron checkpoint


@contextlib.contextmanager
def hf_model_dir(model: str | Path) -> Iterator[Path]:
    """An HF directory for `model`: itself, or a temporary conversion of a Megatron checkpoint."""
    path = Path(model)
    if (path / CHECKPOINT_MARKER).is_file():
        from srpo_megatron.convert.mcore_to_hf import convert_mcore_to_hf

        with tempfile.TemporaryDirectory(prefix="srpo-hf-") as tmp:
            yield Path(convert_mcore_to_hf(path, tmp))
        return
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"--model {model}: not an HF model directory (no config.json) nor a Megatron checkpoint "
            f"(no {CHECKPOINT_MARKER})"
        )
    yield path


def sample_responses(
    engine: RolloutEngine, prompts: Sequence[str], k: int, batch_size: int, desc: str = "sample"
) -> list[list[Rollout]]:
    """k rollouts per prompt, prompts[i] -> result[i]; `batch_size` prompts per engine call."""
    if k < 1 or batch_size < 1:
        raise ValueError(f"sample_responses: k and batch_size must be >= 1 (got k={k}, batch_size={batch_size})")
    groups: list[list[Rollout]] = []
    with tqdm(total=len(prompts), desc=desc, unit="problem", disable=None) as bar:
        for start in range(0, len(prompts), batch_size):
            batch = list(prompts[start : start + batch_size])
            rollouts = engine.generate(batch, n=k)  # prompt-major: prompt i's k samples, then i+1
            groups.extend(rollouts[i * k : (i + 1) * k] for i in range(len(batch)))
            bar.update(len(batch))
    return groups


def add_sampling_args(parser: argparse.ArgumentParser, temperature: float, top_p: float, max_tokens: int) -> None:
    """The engine options both CLIs share, with the caller's defaults."""
    group = parser.add_argument_group("sampling (vLLM)")
    group.add_argument("--temperature", type=float, default=temperature, help=f"(default {temperature})")
    group.add_argument("--top-p", type=float, default=top_p, help=f"nucleus mass (default {top_p})")
    group.add_argument("--max-tokens", type=int, default=max_tokens, help=f"tokens per response (default {max_tokens})")
    group.add_argument("--max-model-len", type=int, default=None,
                       help="prompt + response limit (default: max-tokens + 2048)")
    group.add_argument("--seed", type=int, default=0, help="engine seed (default 0)")
    group.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float16", "float32"])
    group.add_argument("--tensor-parallel-size", type=int, default=1, help="vLLM TP (1 on CPU)")
    group.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    group.add_argument("--cpu-kvcache-gib", type=float, default=1.0, help="KV cache on CPU, GiB")
    group.add_argument("--enforce-eager", action="store_true", help="no CUDA graphs / compile (fast start)")
    group.add_argument("--no-chat-template", dest="chat_template", action="store_false",
                       help="send the raw prompt instead of the tokenizer's chat template")
    group.add_argument("--batch-size", type=int, default=64, help="problems per engine call (default 64)")


def rollout_config_from_args(args: argparse.Namespace) -> RolloutConfig:
    """A standalone engine (not colocated with training): no sleep mode, a large GPU share."""
    return RolloutConfig(
        temperature=args.temperature,
        top_p=args.top_p,
        max_response_tokens=args.max_tokens,
        max_model_len=args.max_model_len or args.max_tokens + 2048,
        seed=args.seed,
        dtype=args.dtype,
        tensor_parallel_size=args.tensor_parallel_size,
        gpu_memory_utilization=args.gpu_memory_utilization,
        cpu_kvcache_space_gib=args.cpu_kvcache_gib,
        enforce_eager=args.enforce_eager,
        apply_chat_template=args.chat_template,
        enable_sleep_mode=False,
    )
