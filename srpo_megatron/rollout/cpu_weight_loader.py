"""Weight swaps into an in-process vLLM CPU engine, without vLLM's generic in-place reload.

vLLM's `reload_weights` works for any model and quantization: it rebuilds every layer's
checkpoint-format parameters from meta, materialises them in fresh memory, copies each tensor in
through the layer's loader, re-prepares the layer for its kernels and copies the result back.
For the dense, unquantized models we train, what vLLM's CPU kernels need is much less:
- every linear layer's GEMM holds its own packed copy of the [out, in] weight (oneDNN or
  sgl-kernel), made from the weight by the layer's quant method and then dropped
  (`remove_weight=True`); so a linear layer is re-prepared straight from the stream's tensor
  when it already is the whole weight (one contiguous block), and otherwise from one buffer
  reused by every layer;
- norms, biases and the (padded) embedding rows are copied in place, and embeddings are
  re-prepared too (vLLM's CPU embedding keeps a GEMM handle for use as a tied output layer).
Re-preparing every linear layer is most of vLLM's reload (oneDNN's packing: 0.16 of 0.24 s on
the 105M benchmark model); skipping the rest is what brings the whole sync, TP gather included,
near vLLM's reload of tensors already in memory (`benchmarks/weight_sync.py`).

Fused modules (q/k/v -> qkv_proj, gate/up -> gate_up_proj) follow the model's own
`packed_modules_mapping`. Anything else (GPU, quantized models) goes through vLLM's reload.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

_UNQUANTIZED = ("UnquantizedLinearMethod", "UnquantizedEmbeddingMethod")


def supports_direct_load(model: torch.nn.Module, quantization: str | None) -> bool:
    """Whether `load_into` can take this loaded model: unquantized, only the layer kinds it knows,
    and every linear layer's GEMM packed its own copy of the weight and dropped it (zentorch's
    unpacked mode and the plain `F.linear` fallback keep the tensor they were given instead)."""
    from vllm.platforms import current_platform

    if quantization is not None or not hasattr(model, "packed_modules_mapping") or current_platform.is_zen_cpu():
        return False
    layers = [m for m in model.modules() if hasattr(m, "quant_method")]
    return all(type(m.quant_method).__name__ in _UNQUANTIZED for m in layers) and all(
        m.weight.numel() == 0 for m in layers if type(m.quant_method).__name__ == "UnquantizedLinearMethod")


@torch.no_grad()
def load_into(model: torch.nn.Module, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
    """Write (HF name, full tensor) pairs into vLLM's CPU `model` and re-prepare what they touch.

    A module is written as soon as all its tensors have arrived (any order; a stream ordered by
    layer holds at most one module's tensors). Modules absent from the stream keep their weights."""
    fused_names = {part: (fused, index) for fused, parts in model.packed_modules_mapping.items()
                   for index, part in enumerate(parts)}
    buffer = _LinearWeightBuffer()
    pending: dict[str, dict[int, torch.Tensor]] = {}  # fused parameter -> its HF tensors so far
    for hf_name, tensor in weights:
        module_name, _, param_name = hf_name.rpartition(".")
        parent, _, leaf = module_name.rpartition(".")
        if leaf not in fused_names:
            _write(model.get_submodule(module_name), param_name, [tensor], buffer)
            continue
        fused, index = fused_names[leaf]
        key = f"{parent}.{fused}.{param_name}"
        parts = pending.setdefault(key, {})
        parts[index] = tensor
        if len(parts) == len(model.packed_modules_mapping[fused]):
            _write(model.get_submodule(f"{parent}.{fused}"), param_name, [parts[i] for i in sorted(parts)], buffer)
            del pending[key]
    if pending:
        raise RuntimeError(f"weight stream: fused parameters left incomplete: {sorted(pending)} (every module "
                           "the stream touches must receive all its HF tensors in one load)")


class _LinearWeightBuffer:
    """One flat buffer, grown to the largest linear weight and reused by every layer: the packed
    GEMM copies the weight, so the buffer is free again once a layer is re-prepared."""

    def __init__(self) -> None:
        self._flat: torch.Tensor | None = None

    def take(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        numel = torch.Size(shape).numel()
        if self._flat is None or self._flat.dtype != dtype or self._flat.numel() < numel:
            self._flat = torch.empty(numel, dtype=dtype)
        return self._flat[:numel].view(shape)


def _write(module: torch.nn.Module, param_name: str, parts: list[torch.Tensor], buffer: _LinearWeightBuffer) -> None:
    """Write the concatenation (rows) of `parts` into module.<param_name>; re-prepare the module."""
    method = type(getattr(module, "quant_method", None)).__name__
    current = getattr(module, param_name)
    if method == "UnquantizedLinearMethod" and param_name == "weight":
        # the GEMM dropped the weight after packing it (an empty parameter is left): rebuild it
        shape = (sum(part.shape[0] for part in parts), *parts[0].shape[1:])
        expected = (module.output_size_per_partition, module.input_size_per_partition)
        if shape != expected:
            raise ValueError(f"weight stream: {type(module).__name__}.weight is {expected}, the stream gave {shape}")
        weight = _as_one_block(parts, current.dtype)
        if weight is None:
            weight = buffer.take(shape, current.dtype)
            _copy_rows(weight, parts)
        module.weight = torch.nn.Parameter(weight, requires_grad=False)
        module.quant_method.process_weights_after_loading(module)
        if module.weight.numel():  # it kept our tensor: the buffer would be shared by layers
            raise RuntimeError(f"{type(module).__name__}: vLLM's CPU GEMM kept its weight instead of packing it")
        return
    rows = sum(part.shape[0] for part in parts)
    if method == "UnquantizedEmbeddingMethod":  # rows beyond the vocabulary are vLLM's padding
        _copy_rows(current.data[:rows], parts)
        module.quant_method.process_weights_after_loading(module)
        return
    if rows != current.shape[0]:
        raise ValueError(f"weight stream: {param_name} of {type(module).__name__} has {current.shape[0]} "
                         f"rows, the stream gave {rows}")
    _copy_rows(current.data, parts)


def _as_one_block(parts: list[torch.Tensor], dtype: torch.dtype) -> torch.Tensor | None:
    """The parts as one [rows, cols] weight without a copy, or None: a single part stored row- or
    column-major (the sync's row-parallel weights are transposed views), or adjacent contiguous
    rows of one storage (gate and up of a gathered fc1)."""
    first = parts[0]
    if first.dtype != dtype:
        return None
    if len(parts) == 1:
        return first if first.is_contiguous() or first.t().is_contiguous() else None
    offset = first.storage_offset()
    for part in parts:
        if (not part.is_contiguous() or part.storage_offset() != offset
                or part.untyped_storage().data_ptr() != first.untyped_storage().data_ptr()):
            return None
        offset += part.numel()
    rows = sum(part.shape[0] for part in parts)
    return first.new_empty(0).set_(first.untyped_storage(), first.storage_offset(), (rows, *first.shape[1:]))


def _copy_rows(out: torch.Tensor, parts: list[torch.Tensor]) -> None:
    offset = 0
    for part in parts:
        out[offset:offset + part.shape[0]].copy_(part)
        offset += part.shape[0]
