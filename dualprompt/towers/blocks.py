"""Transformer blocks and token sequences, the same in every tower: a block run with CLIP-LoRA's
low-rank deltas added to its attention projections for that call only (the module's own
weights are never written), and prompt vectors written into a token sequence.

The deltas are a {target: (W, W)} dict per layer, targets among q, k, v, o
(`prompts.LowRankAttention`); `LoRAWeights` adds them to a tower's frozen weights, once per
call while they train, and once for as long as they stay unchanged when they do not.
Where each target lives depends on the block family:
- open_clip `ResidualAttentionBlock`: `nn.MultiheadAttention`, q, k, v stacked in
  ``attn.in_proj_weight`` (3W, W), o in ``attn.out_proj.weight``;
- timm ViT / EVA blocks: q, k, v stacked in ``attn.qkv.weight``, or EVA's separate
  ``attn.q_proj`` / ``k_proj`` / ``v_proj``; o in ``attn.proj.weight``.
peft's LoRA would wrap (and so replace) these modules in the served CLIP; a per-call
`functional_call` keeps the CLIP untouched, which is what a prompt file needs.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call

# Per layer, {parameter name in the block: the weight to run it with} (frozen weight + CLIP-LoRA
# delta, from `LoRAWeights`); None for the frozen weights.
BlockWeights = Optional[Sequence[dict[str, Tensor]]]


def run_block(block: nn.Module, x: Tensor, weights: Optional[dict[str, Tensor]] = None,
              **kwargs) -> Tensor:
    """block(x, **kwargs), with the parameters named in `weights` replaced for this call."""
    if not weights:
        return block(x, **kwargs)
    return functional_call(block, weights, (x,), kwargs, strict=False)


class LoRAWeights:
    """A tower's blocks' attention weights with a `LowRankAttention`'s deltas added.

    While the deltas train (grad enabled and the LoRA tensors, or the attention weights, require
    it) they are merged on every call, inside the graph. Otherwise (evaluation, serving) the
    merged weights are kept and reused until the LoRA tensors or the blocks' attention weights
    change: their version counters (bumped by optimizer steps and ``load_state_dict``),
    storage, device and dtype, and whether inference mode is on.
    Merging is a pass over every attention weight of the tower, about 5% of a batch of 16
    images through ViT-B-32 (benchmarks/perf); kept, it costs a copy of those weights in memory.
    Not an ``nn.Module``: the kept weights are derived, never saved or moved with the model.
    """

    def __init__(self) -> None:
        self._kept: Optional[tuple[tuple, list[dict[str, Tensor]]]] = None

    def __call__(self, lora: nn.Module, blocks: Sequence[nn.Module]) -> list[dict[str, Tensor]]:
        params = list(lora.parameters()) + [p for b in blocks for p in b.attn.parameters()]
        if torch.is_grad_enabled() and any(p.requires_grad for p in params):
            self._kept = None  # LoRA (or, fine-tuned, the attention) trains: in the graph
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
    return weights


def expand(prompt: Tensor, like: Tensor) -> Tensor:
    """(k, W) or (B, k, W) -> (B, k, W) in the dtype of `like`."""
    prompt = prompt.to(like.dtype)
    if prompt.dim() == 2:
        prompt = prompt.unsqueeze(0).expand(like.shape[0], -1, -1)
    return prompt


def replace(x: Tensor, prompt: Tensor, start: int) -> Tensor:
    """x with positions start:start+k replaced by the prompt (no in-place write)."""
    k = prompt.shape[-2]
    return torch.cat([x[:, :start], expand(prompt, x), x[:, start + k:]], dim=1)


def _fit(delta: Tensor, weight: Tensor) -> Tensor:
    if delta.shape != weight.shape:
        raise ValueError(f"LoRA delta of shape {tuple(delta.shape)} does not fit an attention "
                         f"weight of shape {tuple(weight.shape)}")
    return delta.to(weight.dtype)
