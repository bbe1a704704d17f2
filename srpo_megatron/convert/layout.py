"""The HF <-> Megatron parameter layout rules, in one place.

Used by the checkpoint converter (hf-to-mcore, mcore-to-hf) and by the weight sync to vLLM.
Every Megatron parameter has a `ParamRule`: its canonical Megatron name (transformer-engine
naming, which is also what megatron's distributed checkpoints store), its HF names, how the HF
tensors fuse into it, and how it is split across tensor-parallel ranks.

Fused layouts (the part that is easy to get subtly wrong):
- linear_qkv rows are grouped per KV group: [q (heads_per_group x head_dim), k, v] for each group,
  so a TP shard holds whole groups;
- linear_fc1 is [gate; up], and each TP shard holds [gate shard; up shard];
- embedding and output rows are padded to the padded vocabulary size.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from types import MappingProxyType

import torch

from srpo_megatron.models.hf_config import ModelShape

LAYER = "{layer}"

# megatron's local spec keeps the RMSNorms as modules; TE fuses them into the next linear. The
# canonical (TE / checkpoint) names are used throughout; local names are renamed on the way in.
_LOCAL_TO_CANONICAL = MappingProxyType({
    "input_layernorm.weight": "self_attention.linear_qkv.layer_norm_weight",
    "pre_mlp_layernorm.weight": "mlp.linear_fc1.layer_norm_weight",
})
_LAYER_PARAM = re.compile(r"^decoder\.layers\.(\d+)\.(.+)$")


@dataclass(frozen=True)
class ParamRule:
    """How one Megatron parameter relates to HF tensors and to tensor parallelism."""

    name: str  # canonical megatron name; per-layer names contain "{layer}"
    hf_names: tuple[str, ...]  # HF tensors fused into this parameter, same placeholder
    kind: str  # "copy" | "qkv" | "fc1" | "vocab"
    tp_dim: int | None  # the dimension TP splits, None when replicated

    @property
    def per_layer(self) -> bool:
        return LAYER in self.name

    @property
    def checkpoint_key(self) -> str:
        """The key in megatron's distributed checkpoint (layers stacked along a leading axis)."""
        return self.name.replace(f"{LAYER}.", "")


def param_rules(shape: ModelShape) -> list[ParamRule]:
    """All parameter rules of a model, in a fixed order (embedding, layers, final norm, output)."""
    layer = f"decoder.layers.{LAYER}."
    hf_layer = f"model.layers.{LAYER}."
    attn = hf_layer + "self_attn."
    rules = [
        ParamRule("embedding.word_embeddings.weight", ("model.embed_tokens.weight",), "vocab", 0),
        ParamRule(layer + "self_attention.linear_qkv.layer_norm_weight",
                  (hf_layer + "input_layernorm.weight",), "copy", None),
        ParamRule(layer + "self_attention.linear_qkv.weight",
                  (attn + "q_proj.weight", attn + "k_proj.weight", attn + "v_proj.weight"), "qkv", 0),
    ]
    if shape.qkv_bias:
        rules.append(ParamRule(layer + "self_attention.linear_qkv.bias",
                               (attn + "q_proj.bias", attn + "k_proj.bias", attn + "v_proj.bias"),
                               "qkv", 0))
    rules += [
        ParamRule(layer + "self_attention.linear_proj.weight", (attn + "o_proj.weight",), "copy", 1),
        ParamRule(layer + "mlp.linear_fc1.layer_norm_weight",
                  (hf_layer + "post_attention_layernorm.weight",), "copy", None),
        ParamRule(layer + "mlp.linear_fc1.weight",
                  (hf_layer + "mlp.gate_proj.weight", hf_layer + "mlp.up_proj.weight"), "fc1", 0),
        ParamRule(layer + "mlp.linear_fc2.weight", (hf_layer + "mlp.down_proj.weight",), "copy", 1),
        ParamRule("decoder.final_layernorm.weight", ("model.norm.weight",), "copy", None),
    ]
    if not shape.tied_embeddings:
        rules.append(ParamRule("output_layer.weight", ("lm_head.weight",), "vocab", 0))
    return rules


def resolve(name: str, layer: int | None) -> str:
    return name if layer is None else name.replace(LAYER, str(layer))


def canonical_name(module_param_name: str, layer_offset: int = 0) -> tuple[str, int | None]:
    """A model's `named_parameters()` name -> (canonical template name, global layer or None).

    layer_offset is the index of this pipeline stage's first layer.
    """
    match = _LAYER_PARAM.match(module_param_name)
    if not match:
        return module_param_name, None
    local_layer, rest = int(match.group(1)), match.group(2)
    rest = _LOCAL_TO_CANONICAL.get(rest, rest)
    return f"decoder.layers.{LAYER}.{rest}", local_layer + layer_offset


# ---- fusing HF tensors into a full (unsharded) Megatron tensor, and back -----------------------

def _qkv_split_sizes(shape: ModelShape) -> list[int]:
    return [shape.heads_per_group * shape.head_dim, shape.head_dim, shape.head_dim]


def hf_to_mcore(rule: ParamRule, hf: list[torch.Tensor], shape: ModelShape, padded_vocab: int) -> torch.Tensor:
    """Fuse the HF tensors of `rule` into the full Megatron tensor."""
    if rule.kind == "copy":
        return hf[0]
    if rule.kind == "qkv":
        groups = shape.num_query_groups
        q, k, v = (t.reshape(groups, -1, *t.shape[1:]) for t in hf)
        return torch.cat([q, k, v], dim=1).reshape(-1, *hf[0].shape[1:])
    if rule.kind == "fc1":
        return torch.cat(hf, dim=0)
    if rule.kind == "vocab":
        rows, rest = hf[0].shape[0], hf[0].shape[1:]
        if rows > padded_vocab:
            raise ValueError(f"{rule.hf_names[0]} has {rows} rows, more than the padded vocabulary "
                             f"{padded_vocab}")
        return torch.cat([hf[0], hf[0].new_zeros(padded_vocab - rows, *rest)], dim=0)
    raise ValueError(f"unknown parameter kind {rule.kind!r}")


def mcore_to_hf(rule: ParamRule, full: torch.Tensor, shape: ModelShape) -> list[torch.Tensor]:
    """Split a full Megatron tensor into the HF tensors of `rule` (same order as rule.hf_names)."""
    if rule.kind == "copy":
        return [full]
    if rule.kind == "qkv":  # one copy regroups the rows as [q; k; v]; the HF tensors are its blocks
        groups, rest = shape.num_query_groups, full.shape[1:]
        sizes = _qkv_split_sizes(shape)
        regrouped = torch.empty_like(full)
        blocks = torch.split(regrouped, [groups * size for size in sizes])
        for block, part in zip(blocks, torch.split(full.reshape(groups, -1, *rest), sizes, dim=1)):
            block.view(groups, -1, *rest).copy_(part)
        return list(blocks)
    if rule.kind == "fc1":
        return list(torch.chunk(full, 2, dim=0))
    if rule.kind == "vocab":
        return [full[: shape.vocab_size]]
    raise ValueError(f"unknown parameter kind {rule.kind!r}")


# ---- tensor-parallel sharding of a full Megatron tensor --------------------------------------

def shard(rule: ParamRule, full: torch.Tensor, tp_rank: int, tp_size: int) -> torch.Tensor:
    """This TP rank's slice of a full Megatron tensor."""
    if rule.tp_dim is None or tp_size == 1:
        return full
    if rule.kind == "fc1":
        gate, up = torch.chunk(full, 2, dim=0)
        return torch.cat([gate.chunk(tp_size, 0)[tp_rank], up.chunk(tp_size, 0)[tp_rank]], dim=0)
    return full.chunk(tp_size, dim=rule.tp_dim)[tp_rank]


def unshard(rule: ParamRule, stacked: torch.Tensor) -> torch.Tensor:
    """Inverse of `shard`: the full tensor from all TP ranks' slices stacked in rank order
    ([tp, *shard_shape], what an all-gather into one tensor produces). Row-split parameters
    come back as a view of `stacked`, without a copy."""
    tp = stacked.shape[0]
    if rule.tp_dim is None or tp == 1:
        return stacked[0]
    if rule.kind == "fc1":  # each shard is [gate_i; up_i] -> [gate_0..gate_n; up_0..up_n]
        return stacked.unflatten(1, (2, -1)).transpose(0, 1).flatten(0, 2)
    if rule.tp_dim == 0:
        return stacked.flatten(0, 1)
    return stacked.movedim(0, rule.tp_dim).flatten(rule.tp_dim, rule.tp_dim + 1)


def gather_full(rule: ParamRule, local: torch.Tensor, gather) -> torch.Tensor:
    """The full tensor from this TP rank's slice through `gather(shard, out=None) -> [tp, *shard]`
    (an all-gather, `rollout.tp_gather`), laid out so that no copy reorders it, where `unshard` of
    one gather copies fc1 and row-parallel weights (~80% of a layer):
    - fc1 slices are [gate_i; up_i]: gathering the halves separately lands [gate; up] directly;
    - row-parallel [out, in/tp] slices are gathered transposed, and the full weight is the
      transposed view of the [in, out] result (vLLM's CPU GEMM also packs [in, out] 3x faster)."""
    if rule.tp_dim is None or gather.size == 1:
        return local
    if rule.tp_dim == 1:
        return gather(local.t()).flatten(0, 1).t()
    if rule.kind != "fc1":
        return unshard(rule, gather(local))
    halves = local.chunk(2)
    full = local.new_empty((2, gather.size, *halves[0].shape))
    for half, out in zip(halves, full):
        gather(half, out=out)
    return full.flatten(0, 2)


def rules_by_name(shape: ModelShape) -> dict[str, ParamRule]:
    return {rule.name: rule for rule in param_rules(shape)}


# ---- a model's own parameters, and the HF names a full tensor becomes ---------------------------

def layer_offset(model) -> int:
    """Global index of this pipeline stage's first transformer layer."""
    layers = model.decoder.layers
    return layers[0].layer_number - 1 if len(layers) else 0


def is_tied_output_copy(name: str, shape: ModelShape) -> bool:
    """Whether `name` is the last stage's copy of a tied embedding: it holds the embedding's
    weights, has no HF tensor of its own, and the embedding's rule describes it."""
    return name == "output_layer.weight" and shape.tied_embeddings


def hf_named(rule: ParamRule, layer: int | None, full: torch.Tensor,
             shape: ModelShape) -> list[tuple[str, torch.Tensor]]:
    """The (HF name, tensor) pairs one full Megatron tensor of `layer` becomes."""
    return [(resolve(name, layer), tensor) for name, tensor in zip(rule.hf_names, mcore_to_hf(rule, full, shape))]


def full_shape(rule: ParamRule, shape: ModelShape, vocab_size_padded: int) -> tuple[int, ...]:
    """Shape of the full (unsharded) Megatron tensor, known on every rank without communication."""
    h, hd = shape.hidden_size, shape.head_dim
    qkv_rows = (shape.num_attention_heads + 2 * shape.num_query_groups) * hd
    if rule.kind == "vocab":
        return (vocab_size_padded, h)
    if rule.kind == "qkv":
        return (qkv_rows, h) if rule.name.endswith("weight") else (qkv_rows,)
    if rule.kind == "fc1":
        return (2 * shape.ffn_hidden_size, h)
    if rule.name.endswith("linear_proj.weight"):
        return (h, shape.num_attention_heads * hd)
    if rule.name.endswith("linear_fc2.weight"):
        return (h, shape.ffn_hidden_size)
    return (h,)  # RMSNorm weights


def sync_order(shape: ModelShape) -> list[tuple[ParamRule, int | None]]:
    """(rule, layer) in model order, each layer's parameters together.

    vLLM finishes loading a module only when all its tensors arrived in the same call, so weight
    streams keep a layer's tensors adjacent and buckets split only between layers.
    """
    rules = param_rules(shape)
    per_layer = [r for r in rules if r.per_layer]
    order = [(r, None) for r in rules if r.name.startswith("embedding")]
    for layer in range(shape.num_layers):
        order += [(r, layer) for r in per_layer]
    order += [(r, None) for r in rules if not r.per_layer and not r.name.startswith("embedding")]
    return order
