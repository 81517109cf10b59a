"""Transformer blocks and token sequences, the same in every tower: a block run with CLIP-LoRA's
low-rank deltas added to its attention projections (and MLP) for that call only (the module's own
weights are never written), a block that computes only the rows that are read (`run_block`'s
`rows`), and prompt vectors written into a token sequence.

The deltas are a {target: (out, in)} dict per layer, targets among q, k, v, o and the MLP's
mlp_in, mlp_out (`prompts.LowRankAttention`). `LoRAWeights` decides how a tower runs them:
while they train, open_clip's own blocks take them as a low-rank path beside the frozen
projections (`LowRank`) and other blocks get them added to the frozen weights per call; when
they do not train, they are added once and kept for as long as they stay unchanged.
Where each target lives depends on the block family:
- open_clip `ResidualAttentionBlock`: `nn.MultiheadAttention`, q, k, v stacked in
  ``attn.in_proj_weight`` (3W, W), o in ``attn.out_proj.weight``;
- timm ViT / EVA blocks: q, k, v stacked in ``attn.qkv.weight``, or EVA's separate
  ``attn.q_proj`` / ``k_proj`` / ``v_proj``; o in ``attn.proj.weight``;
- the MLP: open_clip's ``mlp.c_fc`` / ``mlp.c_proj``, timm's ``mlp.fc1`` / ``mlp.fc2``.
peft's LoRA would wrap (and so replace) these modules in the served CLIP; a per-call
`functional_call` keeps the CLIP untouched, which is what a prompt file needs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from open_clip.transformer import ResidualAttentionBlock
from torch import Tensor, nn
from torch.func import functional_call

from ..config import MLP_TARGETS


@dataclass(frozen=True)
class LowRank:
    """One layer's CLIP-LoRA factors, {target: (A (r, in), B (out, r))} with delta W = B @ A (B
    already scaled), run as their own path beside the frozen projections (`run_block`), with
    `dropout` on each path's input (CLIP-LoRA's)."""
    factors: dict[str, tuple[Tensor, Tensor]]
    dropout: float = 0.0


# Per layer: {parameter name in the block: the weight to run it with} (frozen weight + CLIP-LoRA
# delta), or the `LowRank` factors (from `LoRAWeights`); None for the frozen weights.
BlockWeights = Optional[Sequence[Union[dict[str, Tensor], LowRank]]]


def run_block(block: nn.Module, x: Tensor,
              weights: Union[dict[str, Tensor], LowRank, None] = None,
              rows: Optional[Tensor] = None, **kwargs) -> Tensor:
    """block(x, **kwargs), with the parameters named in `weights` replaced for this call, or
    with LoRA's low-rank path beside its attention projections.

    rows: (B, m) the positions whose outputs are read: returns only those, (B, m, W). Every
    position still gives its key and value; open_clip's own blocks compute the query, output
    projection and MLP of these rows alone (`_written_block`). For the block before pooling
    (one row) and for a block whose prompt outputs the next layer replaces."""
    if rows is not None and takes_low_rank_path(block) and _writes_out(weights):
        return _written_block(block, x, weights, rows=rows, **kwargs)
    if isinstance(weights, LowRank):
        y = _written_block(block, x, weights, **kwargs)
    elif not weights:
        y = block(x, **kwargs)
    else:
        y = functional_call(block, weights, (x,), kwargs, strict=False)
    return y if rows is None else _take(y, rows)


def _take(x: Tensor, rows: Tensor) -> Tensor:
    """(B, L, ...) at (B, m) positions -> (B, m, ...)."""
    return x[torch.arange(x.shape[0], device=x.device)[:, None], rows]


def _writes_out(weights: Union[dict[str, Tensor], LowRank, None]) -> bool:
    """Whether `_written_block` runs these weights: LoRA factors, or replaced attention
    projections and MLP weights (what `lora_weights` gives an open_clip block)."""
    return (isinstance(weights, LowRank) or not weights
            or set(weights) <= set(_ATTN_WEIGHTS + _MLP_WEIGHTS))


def takes_low_rank_path(block: nn.Module) -> bool:
    """open_clip's own `ResidualAttentionBlock` (every tower of OpenAI-layout CLIP, and the
    text towers of most others) with batch-first, self-attention `nn.MultiheadAttention`."""
    attn = getattr(block, "attn", None)
    return (type(block) is ResidualAttentionBlock and isinstance(attn, nn.MultiheadAttention)
            and attn.batch_first and attn._qkv_same_embed_dim and not attn.dropout
            and not hasattr(block, "ln_1_kv"))


_ATTN_WEIGHTS = ("attn.in_proj_weight", "attn.out_proj.weight")
_MLP_WEIGHTS = ("mlp.c_fc.weight", "mlp.c_proj.weight")
_MLP_KEYS = frozenset(MLP_TARGETS + _MLP_WEIGHTS)  # what makes `_written_block` write the MLP


def _written_block(block: nn.Module, x: Tensor,
                   weights: Union[dict[str, Tensor], LowRank, None] = None,
                   attn_mask: Optional[Tensor] = None, rows: Optional[Tensor] = None) -> Tensor:
    """`ResidualAttentionBlock.forward` (self-attention), written out for two savings that
    `nn.MultiheadAttention`, which projects q, k, v inside one call, cannot take:
    - LoRA's low-rank path (`LowRank` weights): x A^T B^T added to the frozen q, k, v and
      output projections (and MLP layers), the merged weights' numbers, but its backward
      forms only the rank-r factors' gradients, where merged weights need a full (3W, W)
      weight gradient per layer
      (that made the training step 0.96x full fine-tuning's; benchmarks/perf);
    - `rows` (B, m): the outputs of those positions only, (B, m, W): keys and values from
      every position, the query, output projection and MLP of these (`run_block`).
    `weights` may also be {parameter name: weight} for the attention projections and MLP
    weights (merged LoRA weights, `lora_weights`). Parity with the module's own forward,
    features and gradients, is tested (tests/test_lora_consistency.py, tests/test_towers.py)."""
    attn = block.attn
    factors = weights.factors if isinstance(weights, LowRank) else {}
    dropout = weights.dropout if isinstance(weights, LowRank) else 0.0
    named = weights if isinstance(weights, dict) else {}
    in_w = named.get(_ATTN_WEIGHTS[0], attn.in_proj_weight)
    out_w = named.get(_ATTN_WEIGHTS[1], attn.out_proj.weight)
    h = block.ln_1(x)  # (B, L, W)
    batch, length, width = h.shape
    heads = attn.num_heads

    in_b = attn.in_proj_bias
    if rows is None:
        q, k, v = F.linear(h, in_w, in_b).split(width, dim=-1)
        query_in = h
    else:  # keys and values at every position, queries at `rows` only
        query_in = _take(h, rows)  # (B, m, W)
        q = F.linear(query_in, in_w[:width], None if in_b is None else in_b[:width])
        k, v = F.linear(h, in_w[width:], None if in_b is None else in_b[width:]).split(
            width, dim=-1)
        x = _take(x, rows)

    def low_rank(t: str, inputs: Tensor) -> Optional[Tensor]:
        if t not in factors:
            return None
        a, b = factors[t]
        if dropout:
            inputs = F.dropout(inputs, dropout)
        return (inputs @ a.to(inputs.dtype).T) @ b.to(inputs.dtype).T

    qkv = [q, k, v]
    for i, (t, inputs) in enumerate((("q", query_in), ("k", h), ("v", h))):
        extra = low_rank(t, inputs)
        if extra is not None:
            qkv[i] = qkv[i] + extra
    q, k, v = (y.view(batch, -1, heads, width // heads).transpose(1, 2) for y in qkv)
    mask = attn_mask.to(h.dtype) if attn_mask is not None else None  # as open_clip passes it
    if mask is not None and rows is not None:
        mask = mask[rows].unsqueeze(1)  # (B, 1, m, L): the query rows of the mask
    o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    o = o.transpose(1, 2).reshape(batch, -1, width)
    out = F.linear(o, out_w, attn.out_proj.bias)
    extra = low_rank("o", o)
    if extra is not None:
        out = out + extra
    x = x + block.ls_1(out)
    h = block.ln_2(x)
    mlp = block.mlp
    if _MLP_KEYS.isdisjoint(factors) and _MLP_KEYS.isdisjoint(named):  # every call: no sets
        return x + block.ls_2(mlp(h))
    if list(mlp._modules) != ["c_fc", "gelu", "c_proj"]:  # written out below as these three
        raise NotImplementedError(f"LoRA on an MLP of {list(mlp._modules)}: expected open_clip's"
                                  f" c_fc, gelu, c_proj")
    u = F.linear(h, named.get(_MLP_WEIGHTS[0], mlp.c_fc.weight), mlp.c_fc.bias)
    extra = low_rank("mlp_in", h)
    u = mlp.gelu(u if extra is None else u + extra)
    y = F.linear(u, named.get(_MLP_WEIGHTS[1], mlp.c_proj.weight), mlp.c_proj.bias)
    extra = low_rank("mlp_out", u)
    return x + block.ls_2(y if extra is None else y + extra)


class LoRAWeights:
    """A tower's blocks' attention (and, when targeted, MLP) weights with a
    `LowRankAttention`'s deltas added.

    While the deltas train (grad enabled and the LoRA tensors, or the attention weights, require
    it), open_clip's own blocks run them as a low-rank path beside the frozen projections
    (`LowRank`); other blocks (timm, EVA) get them merged on every call, inside the graph.
    Otherwise (evaluation, serving) the merged weights are kept and reused until the LoRA
    tensors or the blocks' attention weights change: their version counters (bumped by
    optimizer steps and ``load_state_dict``), storage, device and dtype, and whether inference
    mode is on.
    Merging is a pass over every attention weight of the tower, about 5% of a batch of 16
    images through ViT-B-32 (benchmarks/perf); kept, it costs a copy of those weights in memory.
    Not an ``nn.Module``: the kept weights are derived, never saved or moved with the model.
    """

    def __init__(self) -> None:
        self._kept: Optional[tuple[tuple, list[dict[str, Tensor]]]] = None

    def __call__(self, lora: nn.Module,
                 blocks: Sequence[nn.Module]) -> list[Union[dict[str, Tensor], LowRank]]:
        params = list(lora.parameters()) + [p for b in blocks for p in b.attn.parameters()]
        if lora.mlp:  # LoRA on the MLP: its frozen weights are merged too
            params += [p for b in blocks for p in b.mlp.parameters()]
        if torch.is_grad_enabled() and any(p.requires_grad for p in params):
            self._kept = None  # LoRA (or, fine-tuned, the attention) trains: in the graph
            if all(takes_low_rank_path(b) for b in blocks):
                dropout = lora.dropout if lora.training else 0.0
                return [LowRank(f, dropout) for f in lora.factors()]
            return [lora_weights(b, d) for b, d in zip(blocks, lora())]
        # inference tensors (made under inference_mode) cannot be saved for a backward later
        key = (torch.is_inference_mode_enabled(), _state(params))
        kept = self._kept
        if kept is None or kept[0] != key:
            with torch.no_grad():
                kept = (key, [lora_weights(b, d) for b, d in zip(blocks, lora())])
            self._kept = kept
        return kept[1]


def _state(tensors: Sequence[Tensor]) -> tuple:
    return tuple((t._version, t.data_ptr(), t.device, t.dtype) for t in tensors)


def lora_weights(block: nn.Module, deltas: dict[str, Tensor]) -> dict[str, Tensor]:
    """{parameter name in `block`: frozen weight + delta} for the targets in `deltas`."""
    attn = getattr(block, "attn", None)
    if isinstance(attn, nn.MultiheadAttention) and attn._qkv_same_embed_dim:
        packed, out = "attn.in_proj_weight", "attn.out_proj.weight"
    elif isinstance(getattr(attn, "qkv", None), nn.Linear):
        packed, out = "attn.qkv.weight", "attn.proj.weight"
    elif all(isinstance(getattr(attn, f"{t}_proj", None), nn.Linear) for t in "qkv"):
        packed, out = None, "attn.proj.weight"
    else:
        raise NotImplementedError(
            f"LoRA needs attention with packed q/k/v (nn.MultiheadAttention, timm qkv) or "
            f"separate q_proj/k_proj/v_proj; got {type(attn).__name__} in "
            f"{type(block).__name__}")
    params = dict(block.named_parameters())
    weights: dict[str, Tensor] = {}
    qkv = [deltas.get(t) for t in ("q", "k", "v")]
    if any(d is not None for d in qkv):
        if packed is not None:
            w = params[packed]  # (3W, W): q, k, v stacked
            zero = w.new_zeros(w.shape[0] // 3, w.shape[1])
            weights[packed] = w + torch.cat(
                [zero if d is None else _fit(d, zero) for d in qkv])
        else:
            for t, d in zip("qkv", qkv):
                if d is not None:
                    w = params[f"attn.{t}_proj.weight"]
                    weights[f"attn.{t}_proj.weight"] = w + _fit(d, w)
    if deltas.get("o") is not None:
        w = params[out]
        weights[out] = w + _fit(deltas["o"], w)
    mlp = {t: d for t, d in deltas.items() if t in MLP_TARGETS and d is not None}
    if mlp:
        for t, name in zip(MLP_TARGETS, mlp_weight_names(block)):
            if t in mlp:
                weights[name] = params[name] + _fit(mlp[t], params[name])
    return weights


def mlp_weight_names(block: nn.Module) -> tuple[str, str]:
    """The parameter names of a block's MLP's first and second linear weight (LoRA's mlp_in
    and mlp_out): open_clip's c_fc / c_proj, timm's fc1 / fc2."""
    mlp = getattr(block, "mlp", None)
    for first, second in (("c_fc", "c_proj"), ("fc1", "fc2")):
        if all(isinstance(getattr(mlp, n, None), nn.Linear) for n in (first, second)):
            return f"mlp.{first}.weight", f"mlp.{second}.weight"
    raise NotImplementedError(
        f"LoRA on the MLP needs two linear layers (open_clip's c_fc / c_proj or timm's fc1 / "
        f"fc2); got {type(mlp).__name__} in {type(block).__name__} (a gated MLP, such as "
        f"EVA02's SwiGLU, is not supported): leave mlp_in / mlp_out out of prompt.lora_targets")


def mlp_width(block: nn.Module) -> int:
    """The hidden width of a block's MLP (the output width of its first linear layer)."""
    return block.get_parameter(mlp_weight_names(block)[0]).shape[0]


def expand(prompt: Tensor, like: Tensor) -> Tensor:
    """(k, W) or (B, k, W) -> (B, k, W) in the dtype of `like`."""
    prompt = prompt.to(like.dtype)
    if prompt.dim() == 2:
        prompt = prompt.unsqueeze(0).expand(like.shape[0], -1, -1)
    return prompt


def insert(x: Tensor, prompt: Tensor, start: int) -> Tensor:
    """x with the prompt inserted before position `start`: (B, L, W) -> (B, L + k, W)."""
    return torch.cat([x[:, :start], expand(prompt, x), x[:, start:]], dim=1)


def kept_rows(x: Tensor, start: int, k: int) -> Tensor:
    """(B, L - k) the positions of x outside start:start + k (`run_block`'s `rows`)."""
    positions = torch.arange(x.shape[1], device=x.device)
    kept = positions[(positions < start) | (positions >= start + k)]
    return kept.expand(x.shape[0], -1)


def replace(x: Tensor, prompt: Tensor, start: int) -> Tensor:
    """x with positions start:start+k replaced by the prompt (no in-place write)."""
    k = prompt.shape[-2]
    return torch.cat([x[:, :start], expand(prompt, x), x[:, start + k:]], dim=1)


def _fit(delta: Tensor, weight: Tensor) -> Tensor:
    if delta.shape != weight.shape:
        raise ValueError(f"LoRA delta of shape {tuple(delta.shape)} does not fit an attention "
                         f"weight of shape {tuple(weight.shape)}")
    return delta.to(weight.dtype)
