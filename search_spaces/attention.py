"""`nn.MultiheadAttention` with its projections as layers that compplan can compress.

PyTorch's `nn.MultiheadAttention` keeps its query, key and value projections in one raw
Parameter (`in_proj_weight`, 3E × E) and reads `out_proj`'s weight without calling it, so neither
is a layer a plan can reach. `SplitAttention` computes the same function with both projections as
modules called in the forward pass: `in_proj`, an `nn.Linear(E, 3E)` holding the very same
Parameters, and the original `out_proj`. Its parameter names therefore change
(`attn.in_proj_weight` becomes `attn.in_proj.weight`); its outputs do not (float rounding aside).

- `split_attention(model)`: a context manager that swaps every eligible attention module for a
  `SplitAttention` sharing its Parameters and swaps the originals back on exit. Discovery reads a
  model through it, so the user's model is left as it was.
- `split_attention_(model)`: the same swap, for good: `apply_plan_` and loading an exported file
  make it before they replace layers, so that the layer names a plan uses exist.

An attention module is eligible when its query, key and value share one embedding size and it has
neither `bias_k`/`bias_v` nor `add_zero_attn`; others stay as they are, kept with their reason.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "SplitAttention",
    "ineligible_reason",
    "layer_weight",
    "split_attention",
    "split_attention_",
]


def ineligible_reason(module: nn.MultiheadAttention) -> str:
    """Why this attention module cannot be split ("" when it can)."""
    if not module._qkv_same_embed_dim:
        return "its key/value sizes differ from the query's (kdim/vdim)"
    if module.bias_k is not None or module.add_zero_attn:
        return "it uses add_bias_kv or add_zero_attn"
    return ""


class SplitAttention(nn.Module):
    """Multi-head attention whose projections are modules: `in_proj` (E → 3E) and `out_proj`.

    Computes what `nn.MultiheadAttention` computes, for the same arguments. Self-attention (query,
    key and value the same tensor, or equal ones) calls `in_proj` once on the query; cross
    attention applies its three row blocks to query, key and value functionally, so there an
    activation quantizer in front of `in_proj` would not run (discovery then finds `in_proj`
    not called as a module and keeps it).

    The attributes `nn.TransformerEncoderLayer` reads for its fast path are provided
    (`in_proj_weight`, `in_proj_bias`, `batch_first`, ...), with the projections' current
    weights.
    """

    _qkv_same_embed_dim = True
    merge_masks = nn.MultiheadAttention.merge_masks  # the fast path's mask arithmetic

    def __init__(self, attention: nn.MultiheadAttention):
        super().__init__()
        if why := ineligible_reason(attention):
            raise ValueError(f"cannot split this MultiheadAttention: {why}")
        self.embed_dim = attention.embed_dim
        self.num_heads = attention.num_heads
        self.head_dim = attention.head_dim
        self.dropout = attention.dropout
        self.batch_first = attention.batch_first
        bias = attention.in_proj_bias is not None
        in_proj = nn.Linear(self.embed_dim, 3 * self.embed_dim, bias=bias, device="meta")
        in_proj.weight = attention.in_proj_weight  # the same Parameter, not a copy
        if bias:
            in_proj.bias = attention.in_proj_bias
        self.in_proj = in_proj
        self.out_proj = attention.out_proj
        self.bias_k = self.bias_v = None
        self.add_zero_attn = False
        self.train(attention.training)

    @property
    def in_proj_weight(self) -> Tensor:
        return self.in_proj.weight

    @property
    def in_proj_bias(self) -> Tensor | None:
        return self.in_proj.bias

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = True,
        attn_mask: Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        batched = query.dim() == 3
        same = _same(query, key) and _same(key, value)
        if not batched:  # one sequence: (L, E)
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif not self.batch_first:  # (L, N, E) → (N, L, E)
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        if same:
            q, k, v = self.in_proj(query).chunk(3, dim=-1)
        else:
            weights = self.in_proj.weight.chunk(3)
            biases = (None,) * 3 if self.in_proj.bias is None else self.in_proj.bias.chunk(3)
            q, k, v = (
                F.linear(x, w, b)
                for x, w, b in zip((query, key, value), weights, biases, strict=True)
            )
        n, length, _ = q.shape
        source = k.shape[1]
        heads = (n, -1, self.num_heads, self.head_dim)
        q, k, v = (t.reshape(heads).transpose(1, 2) for t in (q, k, v))
        mask = _additive_mask(
            attn_mask, key_padding_mask, is_causal, n, self.num_heads, length, source, q.dtype
        )
        dropout = self.dropout if self.training else 0.0
        if need_weights:
            scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)
            if mask is not None:
                scores = scores + mask
            attention = scores.softmax(dim=-1)
            out = F.dropout(attention, dropout, self.training) @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
            attention = None
        out = self.out_proj(out.transpose(1, 2).reshape(n, length, self.embed_dim))
        if not batched:
            out = out.squeeze(0)
        elif not self.batch_first:
            out = out.transpose(0, 1)
        if attention is not None:
            attention = attention.mean(dim=1) if average_attn_weights else attention
            if not batched:
                attention = attention.squeeze(0)
        return out, attention


def _same(a: Tensor, b: Tensor) -> bool:
    """The same tensor, or one of equal values (`attn(ln(x), ln(x), ln(x))` computes it thrice)."""
    return a is b or (a.shape == b.shape and bool(torch.equal(a, b)))


def _additive_mask(
    attn_mask: Tensor | None,
    key_padding_mask: Tensor | None,
    is_causal: bool,
    n: int,
    heads: int,
    length: int,
    source: int,
    dtype: torch.dtype,
) -> Tensor | None:
    """One float mask of shape (N, heads, L, S) to add to the scores, as MultiheadAttention
    reads its masks: a True entry of a boolean mask is a position not attended to."""

    def additive(mask: Tensor) -> Tensor:
        if mask.dtype == torch.bool:
            return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(
                mask, float("-inf")
            )
        return mask.to(dtype)

    if attn_mask is None and is_causal:
        attn_mask = torch.ones(length, source, dtype=torch.bool).triu(1)
    total = None
    if attn_mask is not None:
        mask = additive(attn_mask)
        total = mask.view(n, heads, length, source) if mask.dim() == 3 else mask
    if key_padding_mask is not None:
        padding = additive(key_padding_mask).view(n, 1, 1, source)
        total = padding if total is None else total + padding
    if total is not None:
        total = total.expand(n, heads, length, source)
    return total


def _eligible(model: nn.Module) -> list[str]:
    return [
        name
        for name, module in model.named_modules()
        if type(module) is nn.MultiheadAttention and not ineligible_reason(module)
    ]


def split_attention_(model: nn.Module) -> list[str]:
    """Replace every eligible `nn.MultiheadAttention` of `model` by a `SplitAttention` sharing
    its Parameters, in place; returns their names."""
    names = _eligible(model)
    for name in names:
        model.set_submodule(name, SplitAttention(model.get_submodule(name)))
    return names


@contextlib.contextmanager
def split_attention(model: nn.Module) -> Iterator[list[str]]:
    """`split_attention_` for the length of a `with` block: the originals come back on exit."""
    originals = {name: model.get_submodule(name) for name in _eligible(model)}
    try:
        for name, module in originals.items():
            model.set_submodule(name, SplitAttention(module))
        yield list(originals)
    finally:
        for name, module in originals.items():
            model.set_submodule(name, module)


def layer_weight(model: nn.Module, name: str) -> Tensor:
    """The weight of the layer a graph calls `name`, in `model` whether or not its attention is
    split: "….in_proj" of an unsplit `nn.MultiheadAttention` is its `in_proj_weight`."""
    parent, _, leaf = name.rpartition(".")
    owner = model.get_submodule(parent) if parent else model
    if leaf == "in_proj" and isinstance(owner, nn.MultiheadAttention):
        return owner.in_proj_weight
    return model.get_submodule(name).weight
