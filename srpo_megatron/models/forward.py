"""Running a megatron model through megatron's pipeline schedule (1F1B under PP, plain otherwise).

The caller supplies micro-batches and a per-micro-batch `loss_fn(batch, output) -> (loss, metrics)`
evaluated on the last pipeline stage, where `output` is this TP rank's logits [b, T, V/tp], or
[b, T - f, V/tp] for the positions f.. when the micro-batch holds `logits_from` = f.
Used for verification (forward only), log-prob recomputation and training (forward + backward).

A micro-batch that holds `packed_lengths` [b] runs packed: its rows' first `packed_lengths`
tokens back to back in one THD sequence (megatron's `PackedSeqParams`; Transformer Engine's
attention on GPU, `models.attention.SdpaAttention` otherwise), so no layer computes on padding;
one that also holds `response_starts` [b] runs with shared prompts where the attention supports
them (`_SharedPrompts`). The logits come back in the [b, T - f, V/tp] layout (zeros where a row
has no token), so `loss_fn` is the same either way.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from functools import partial
from typing import Callable

import torch

from srpo_megatron import platform

LossFn = Callable[[dict, torch.Tensor], tuple[torch.Tensor, dict]]


def run_pipeline(model, micro_batches: list[dict], loss_fn: LossFn, forward_only: bool) -> list[dict]:
    """Forward (and backward unless forward_only) over micro-batches; returns loss_fn's metrics.

    Every micro-batch holds "tokens" [b, T] and whatever loss_fn reads; an optional int
    `logits_from` = f makes the output layer run on positions f.. only (log-prob passes need no
    logits on the prompt: `RolloutBatch.gather` sets it). Shapes may differ between micro-batches
    when the model's config has `variable_seq_lengths` (pipeline p2p then sends shapes first;
    `policy.build_policy` sets it), else under PP they must all be equal. Batches may live in host
    memory: each micro-batch's tensors move to the device when its forward runs. The returned
    list is non-empty only on the last pipeline stage.
    """
    from megatron.core import parallel_state as ps
    from megatron.core.pipeline_parallel import get_forward_backward_func
    from megatron.core.utils import get_model_config

    device = platform.device()
    shares_prompts = _attention_shares_prompts(model)

    def forward_step(data_iterator, step_model):
        host = next(data_iterator)
        batch = {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in host.items()}
        tokens, logits_from = batch["tokens"], batch.get("logits_from", 0)
        positions = torch.arange(tokens.shape[1], device=tokens.device).expand_as(tokens)
        if "packed_lengths" not in host:
            with _output_layer_rows(step_model, slice(logits_from, None)):
                output = step_model(tokens, positions, None)  # causal mask is built inside attention
            return output, partial(_call_loss, loss_fn, batch)
        if "response_starts" in host and shares_prompts:
            shared = _SharedPrompts.of(host["tokens"], host["packed_lengths"], host["response_starts"],
                                       logits_from, device)
            with _output_layer_rows(step_model, shared.logit_index), _rotary_positions(step_model, shared.positions):
                output = step_model(shared.tokens, shared.positions[None], None,
                                    packed_seq_params=shared.params)  # last stage: [1, kept, V/tp]
            kept = shared.kept
        else:
            packing = _Packing.of(host["packed_lengths"], tokens.shape[1], logits_from, device)
            with _output_layer_rows(step_model, packing.logit_index):
                output = step_model(tokens[packing.valid][None], positions[packing.valid][None], None,
                                    packed_seq_params=packing.params)  # last stage: [1, kept, V/tp]
            kept = packing.kept
        if ps.is_pipeline_last_stage():
            output = _unpack(output[0], kept)
        return output, partial(_call_loss, loss_fn, batch)

    shapes = {tuple(m["tokens"].shape) for m in micro_batches}
    micro_batch_size, seq_length = max(b for b, _ in shapes), max(t for _, t in shapes)
    if len(shapes) > 1 and ps.get_pipeline_model_parallel_world_size() > 1 \
            and not get_model_config(model).variable_seq_lengths:
        raise ValueError(f"run_pipeline: micro-batch shapes {sorted(shapes)} differ under pipeline parallelism; "
                         "set the model config's variable_seq_lengths=True (policy.build_policy does)")
    context = torch.no_grad() if forward_only else contextlib.nullcontext()
    with context:
        return get_forward_backward_func()(
            forward_step_func=forward_step,
            data_iterator=iter(micro_batches),
            model=[model],
            num_microbatches=len(micro_batches),
            seq_length=seq_length,
            micro_batch_size=micro_batch_size,
            forward_only=forward_only,
        )


def _call_loss(loss_fn: LossFn, batch: dict, output: torch.Tensor):
    return loss_fn(batch, output)


@dataclass(frozen=True)
class _Packing:
    """One micro-batch [b, w] as a THD pack: row i's first lengths[i] tokens, rows back to back."""

    valid: torch.Tensor  # [b, w] bool: the tokens in the pack, on the device
    kept: torch.Tensor  # [b, w - f] bool: the positions f.. whose logits the loss reads, on the device
    logit_index: torch.Tensor  # [kept] long: the pack position of each kept logit, row-major
    params: object  # megatron's PackedSeqParams

    @classmethod
    def of(cls, lengths: torch.Tensor, width: int, logits_from: int, device) -> _Packing:
        """From host `lengths` [b] (>= 1 each), so building the pack needs no device sync."""
        from megatron.core.packed_seq_params import PackedSeqParams

        valid = torch.arange(width) < lengths[:, None]  # [b, w]
        kept = valid[:, logits_from:]  # [b, w - f]
        pack_position = (valid.flatten().cumsum(0) - 1).view(valid.shape)  # [b, w]
        cu_seqlens = torch.nn.functional.pad(lengths.cumsum(0), (1, 0)).to(torch.int32).to(device)
        longest = int(lengths.max())
        params = PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu_seqlens, cu_seqlens_kv=cu_seqlens,
                                 max_seqlen_q=longest, max_seqlen_kv=longest)
        return cls(valid.to(device), kept.to(device), pack_position[:, logits_from:][kept].to(device), params)


def _unpack(logits: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """[kept, V/tp] logits -> [b, w - f, V/tp], zeros where a row has no token (differentiable)."""
    out = logits.new_zeros(*kept.shape, logits.shape[-1])
    out[kept] = logits
    return out


@dataclass(frozen=True)
class _SharedPrompts:
    """One micro-batch [b, w] as one sequence in which rows with the same prompt share it: each
    distinct prompt once, then each of its rows' responses. The sequence carries each token's
    position in its row (`positions`, for RoPE) and, in `params`, the layout by which
    `SdpaAttention` lets a prompt attend to itself and a response to its prompt and itself; so
    every logit is the one its row alone would give, and a group of 16 rollouts computes its
    prompt once instead of 16 times."""

    kept: torch.Tensor  # [b, w - f] bool: the positions f.. whose logits the loss reads
    logit_index: torch.Tensor  # [kept] long: the sequence position of each kept logit, row-major
    tokens: torch.Tensor  # [1, t]
    positions: torch.Tensor  # [t] long: each token's position in its row
    params: object  # SharedPromptParams

    @classmethod
    def of(cls, tokens: torch.Tensor, lengths: torch.Tensor, starts: torch.Tensor, logits_from: int,
           device) -> _SharedPrompts:
        """From host tokens [b, w], row lengths [b] and response starts [b]."""
        from srpo_megatron.models.attention import SharedPromptLayout, SharedPromptParams

        where = torch.full(tokens.shape, -1, dtype=torch.long)  # [b, w]: each row token's sequence position
        pieces, positions, prompt_spans, response_spans, response_prompt = [], [], [], [], []
        prompts: dict[tuple[int, ...], int] = {}  # prompt tokens -> its index in prompt_spans
        size = 0
        for row in range(tokens.shape[0]):
            start, length = int(starts[row]), int(lengths[row])
            key = tuple(tokens[row, :start].tolist())
            if key not in prompts:
                prompts[key] = len(prompt_spans)
                prompt_spans.append(torch.arange(size, size + start))
                pieces.append(tokens[row, :start])
                positions.append(torch.arange(start))
                size += start
            response_prompt.append(prompts[key])
            where[row, :start] = prompt_spans[prompts[key]]
            response_spans.append(torch.arange(size, size + length - start))
            where[row, start:length] = response_spans[-1]
            pieces.append(tokens[row, start:length])
            positions.append(torch.arange(start, length))
            size += length - start
        layout = SharedPromptLayout.of(prompt_spans, response_spans, torch.tensor(response_prompt), device)
        params = SharedPromptParams(qkv_format="sbhd", max_seqlen_q=size, max_seqlen_kv=size, layout=layout)
        kept = where[:, logits_from:] >= 0  # the row tokens the sequence holds
        return cls(kept.to(device), where[:, logits_from:][kept].to(device), torch.cat(pieces)[None].to(device),
                   torch.cat(positions).to(device), params)


def _attention_shares_prompts(model) -> bool:
    """Whether the model's core attention takes shared-prompt layouts (the local spec's SDPA
    attention; Transformer Engine's takes THD packs instead)."""
    from megatron.core.utils import unwrap_model

    from srpo_megatron.models.attention import SdpaAttention

    return any(isinstance(module, SdpaAttention) for module in unwrap_model(model).modules())


@contextlib.contextmanager
def _rotary_positions(model, positions: torch.Tensor):
    """While a forward runs, give each token the rotary embedding of `positions` [t] instead of
    its index in the sequence. A hook on the model's rotary embedding, removed on exit."""
    from megatron.core.utils import unwrap_model

    rotary = getattr(unwrap_model(model), "rotary_pos_emb", None)
    if rotary is None:  # learned absolute positions: the position ids already say it
        yield
        return
    handle = rotary.register_forward_hook(lambda module, args, freqs: freqs[positions])
    try:
        yield
    finally:
        handle.remove()


@contextlib.contextmanager
def _output_layer_rows(model, rows: slice | torch.Tensor):
    """While a forward runs, feed the output layer only the hidden states [s, b, h] at `rows` of
    their first axis (a slice, or an index into a THD pack). A hook on this stage's output layer,
    removed on exit; no-op for every row and on stages without the output layer."""
    from megatron.core.utils import unwrap_model

    output_layer = getattr(unwrap_model(model), "output_layer", None)
    if output_layer is None or (isinstance(rows, slice) and rows == slice(0, None)):
        yield
        return
    if output_layer.sequence_parallel:
        raise ValueError("run_pipeline: selecting logit positions needs the full sequence at the output layer; "
                         "sequence parallelism splits it")

    def cut(module, args, kwargs):
        hidden = args[0]
        return (hidden[rows] if isinstance(rows, slice) else hidden.index_select(0, rows), *args[1:]), kwargs

    handle = output_layer.register_forward_pre_hook(cut, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def gather_vocab(logits: torch.Tensor) -> torch.Tensor:
    """All TP shards' logits concatenated on the vocabulary axis (verification only: it is big)."""
    from megatron.core import tensor_parallel

    return tensor_parallel.gather_from_tensor_model_parallel_region(logits)


def token_logprobs(output: torch.Tensor, tokens: torch.Tensor, vocab_size: int, temperature: float = 1.0,
                   logits_from: int = 0) -> torch.Tensor:
    """log p(token_t | tokens_<t) from this TP rank's logits, without gathering the vocabulary.

    output: [b, T - f, V/tp] logits of positions f = logits_from..; tokens: [b, T]. Returns
    [b, T]; positions 0..f (no logits before them) are 0.
    """
    from srpo_megatron.algorithms.logprobs import vocab_parallel_logprobs
    from srpo_megatron.models.builder import mask_padded_vocab

    logits = mask_padded_vocab(output[:, :-1].float(), vocab_size)  # [b, T-f-1, V/tp]
    logprobs = vocab_parallel_logprobs(logits, tokens[:, logits_from + 1:], temperature)
    return torch.nn.functional.pad(logprobs, (logits_from + 1, 0))


def response_logits(output: torch.Tensor, mask: torch.Tensor, vocab_size: int, logits_from: int = 0) -> torch.Tensor:
    """[n, V/tp] float32, padding vocabulary masked: the logits that predict the n masked tokens of
    `mask` [b, T], from `output` [b, T - f, V/tp] of positions f = logits_from..; the loss's
    log-probs and entropy need no vocabulary-wide work anywhere else."""
    from srpo_megatron.models.builder import mask_padded_vocab

    return mask_padded_vocab(output[:, :-1][mask[:, logits_from + 1:]].float(), vocab_size)


def response_logprobs(logits: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor, temperature: float = 1.0,
                      logits_from: int = 0) -> torch.Tensor:
    """[b, T]: log p of each masked token of `tokens` [b, T] from its `response_logits` [n, V/tp],
    0 off the mask (differentiable)."""
    from srpo_megatron.algorithms.logprobs import vocab_parallel_logprobs

    predicted = mask[:, logits_from + 1:]  # [b, T-f-1]: True where the predicted token is a response token
    picked = vocab_parallel_logprobs(logits, tokens[:, logits_from + 1:][predicted], temperature)  # [n]
    rows, cols = predicted.nonzero(as_tuple=True)  # row-major, as boolean indexing picks
    return picked.new_zeros(tokens.shape).index_put((rows, cols + logits_from + 1), picked)


@torch.no_grad()
def compute_logprobs(model, micro_batches: list[dict], vocab_size: int, temperature: float = 1.0) -> list[torch.Tensor]:
    """Per-token log-probs [b, T] for each micro-batch (on the last pipeline stage; [] elsewhere)."""

    def keep_logprobs(batch, output):
        logprobs = token_logprobs(output, batch["tokens"], vocab_size, temperature, batch.get("logits_from", 0))
        return output.sum() * 0.0, {"logprobs": logprobs}

    outputs = run_pipeline(model, micro_batches, keep_logprobs, forward_only=True)
    return [out["logprobs"].cpu() for out in outputs]  # small; the trainer keeps batches on the host
