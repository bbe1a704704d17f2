"""Typed rollout configuration and the per-sample record the engine returns.

Pure data: nothing here imports vLLM or touches torch state, so trainer configs can embed
`RolloutConfig` and validate it on a login node.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import torch

FinishReason = Literal["stop", "length"]
LogprobsMode = Literal["processed_logprobs", "raw_logprobs"]
DType = Literal["auto", "bfloat16", "float16", "float32"]

_DTYPES: tuple[str, ...] = ("auto", "bfloat16", "float16", "float32")
_LOGPROBS_MODES: tuple[str, ...] = ("processed_logprobs", "raw_logprobs")
_WEIGHT_TRANSFER: tuple[str, ...] = ("", "ipc", "nccl")


@dataclass(frozen=True)
class RolloutConfig:
    """How the vLLM rollout engine samples, and how it is sized."""

    temperature: float = 1.0
    """Sampling temperature in [0, 2] (vLLM's range); 0 is greedy. SRPO samples at 1.0."""
    top_p: float = 1.0
    """Nucleus-sampling mass in (0, 1]; 1 disables it."""
    top_k: int = 0
    """Keep only the k most likely tokens; 0 disables it (vLLM's convention)."""
    max_response_tokens: int = 1024
    """Most tokens sampled per response; a response cut here finishes with reason "length"."""
    stop: list[str] = field(default_factory=list)
    """Stop strings; a response that emits one finishes with reason "stop" (like EOS)."""
    include_stop_str_in_output: bool = True
    """Keep the stop string in the response text, so format rewards (e.g. a closing tag) see it.
    The response token ids always contain the tokens that produced it."""
    seed: int = 0
    """Engine-level seed. Per-request seeds are not used: they crash vLLM's CPU sampler. Give
    each rollout data-parallel replica its own seed, and every rank of one vLLM TP group the same."""
    n_samples_per_prompt: int = 8
    """G: responses sampled per prompt (the group of the group-relative advantage)."""
    tensor_parallel_size: int = 1
    """vLLM's tensor parallelism, independent of Megatron's. Must be 1 on CPU."""
    gpu_memory_utilization: float = 0.5
    """Fraction of GPU memory vLLM may use for weights + KV cache (colocated: leave room for
    training, whose memory the sleep mode gives back). Ignored on CPU."""
    cpu_kvcache_space_gib: float = 1.0
    """KV-cache size on CPU in GiB (what VLLM_CPU_KVCACHE_SPACE sets). Ignored on GPU."""
    max_model_len: int = 4096
    """Longest prompt + response the engine accepts (sizes the KV-cache blocks per request)."""
    dtype: DType = "auto"
    """Weight/activation dtype of the engine; "auto" takes the checkpoint's."""
    enforce_eager: bool = False
    """Skip CUDA graphs / torch.compile: slower decoding, much faster start (tests, CPU)."""
    apply_chat_template: bool = True
    """Wrap each text prompt as one user message with the tokenizer's chat template."""
    enable_sleep_mode: bool = True
    """GPU only: let `sleep()` release weights and KV cache while Megatron trains."""
    logprobs_mode: LogprobsMode = "processed_logprobs"
    """Which distribution the returned sampled-token log-probs come from. "processed_logprobs":
    the distribution the token was actually drawn from (after temperature, top-k, top-p), i.e.
    the behaviour policy. "raw_logprobs": log_softmax of the unscaled logits. The two agree at
    temperature 1 with top-k/top-p disabled."""

    weight_transfer: str = ""
    """GPU only: also accept weights through vLLM's weight-transfer engine "ipc" or "nccl" (see
    `rollout/transfer_engine.py`); "" = only the in-process sync, which the trainer uses."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first invalid field and how to fix it."""
        self._check_sampling()
        self._check_sizes()
        self._check_choices()

    def _check_sampling(self) -> None:
        if not 0.0 <= self.temperature <= 2.0:
            raise ValueError(f"rollout.temperature must be in [0, 2] (got {self.temperature})")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"rollout.top_p must be in (0, 1]; use 1 to disable (got {self.top_p})")
        if self.top_k < 0:
            raise ValueError(f"rollout.top_k must be >= 0; use 0 to disable (got {self.top_k})")
        if isinstance(self.stop, str) or not all(isinstance(s, str) and s for s in self.stop):
            raise ValueError(f"rollout.stop must be a list of non-empty strings (got {self.stop!r})")

    def _check_sizes(self) -> None:
        positive = ("max_response_tokens", "n_samples_per_prompt", "tensor_parallel_size", "max_model_len")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"rollout.{name} must be >= 1 (got {getattr(self, name)})")
        if self.max_response_tokens >= self.max_model_len:
            raise ValueError(
                f"rollout.max_response_tokens ({self.max_response_tokens}) must be smaller than "
                f"rollout.max_model_len ({self.max_model_len}), which also holds the prompt: "
                "raise max_model_len or lower max_response_tokens"
            )
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ValueError(
                f"rollout.gpu_memory_utilization must be in (0, 1] (got {self.gpu_memory_utilization})"
            )
        if self.cpu_kvcache_space_gib <= 0:
            raise ValueError(f"rollout.cpu_kvcache_space_gib must be > 0 (got {self.cpu_kvcache_space_gib})")

    def _check_choices(self) -> None:
        if self.dtype not in _DTYPES:
            raise ValueError(f"rollout.dtype must be one of {_DTYPES} (got {self.dtype!r})")
        if self.weight_transfer not in _WEIGHT_TRANSFER:
            raise ValueError(f"rollout.weight_transfer must be one of {_WEIGHT_TRANSFER} (got {self.weight_transfer!r})")
        if self.logprobs_mode not in _LOGPROBS_MODES:
            raise ValueError(
                f"rollout.logprobs_mode must be one of {_LOGPROBS_MODES} (got {self.logprobs_mode!r})"
            )


@dataclass
class Rollout:
    """One sampled response, flattened prompt-major: prompt i's samples 0..G-1, then prompt i+1."""

    prompt_index: int
    """Position of the prompt in the list given to `generate`."""
    sample_index: int
    """0..G-1 within the prompt's group."""
    prompt_token_ids: list[int]
    """The tokens the engine was conditioned on (after chat template and suffix)."""
    response_token_ids: list[int]
    """Sampled tokens, including a final EOS or the token that completed a stop string."""
    response_text: str
    """Decoded response; cut at a stop string (kept when include_stop_str_in_output)."""
    logprobs: torch.Tensor
    """float32 [len(response_token_ids)]: log-prob of each sampled token (see logprobs_mode)."""
    finish_reason: FinishReason
    """"stop" (EOS or stop string) or "length" (cut at max_response_tokens / max_model_len)."""
