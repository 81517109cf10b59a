"""Running open_clip's towers from embeddings, with prompt vectors inserted.

This is the one place that reaches below open_clip's public API: it re-runs the text tower
(``CLIP.encode_text``) and the ViT image tower (``VisionTransformer.forward``) from their
sub-modules. `tests/test_towers.py` checks parity with ``encode_text`` / ``encode_image``;
the open_clip range in pyproject.toml is the one that test ran on.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call

from open_clip.model import CLIP
from open_clip.transformer import VisionTransformer


def check_supported(clip: nn.Module) -> None:
    """Raise NotImplementedError, naming the class, for towers dualprompt cannot prompt."""
    if not isinstance(clip, CLIP):
        raise NotImplementedError(
            f"dualprompt supports open_clip `CLIP` models with the native text tower; got "
            f"{type(clip).__name__} (CustomTextCLIP / Hugging Face text towers and CoCa are "
            "not supported yet)")
    if not isinstance(clip.visual, VisionTransformer):
        raise NotImplementedError(
            f"dualprompt supports ViT image towers (open_clip VisionTransformer); got "
            f"{type(clip.visual).__name__} (ResNet and timm towers are not supported yet)")
    if clip.text_pool_type not in ("argmax", "eos"):
        raise NotImplementedError(
            f"text pool type {clip.text_pool_type!r} is not supported (argmax, eos)")
    for name, tower in (("text", clip.transformer), ("image", clip.visual.transformer)):
        if not tower.batch_first:
            raise NotImplementedError(f"the {name} transformer of {type(clip).__name__} is not "
                                      "batch-first (open_clip < 2.2 layout)")


def text_layers(clip: CLIP) -> int:
    return len(clip.transformer.resblocks)


def vision_layers(clip: CLIP) -> int:
    return len(clip.visual.transformer.resblocks)


def text_width(clip: CLIP) -> int:
    return clip.token_embedding.weight.shape[1]


def vision_width(clip: CLIP) -> int:
    return clip.visual.class_embedding.shape[0]


# A per-layer {target: delta (W, W)} of CLIP-LoRA (see `prompts.LowRankAttention`).
BlockDeltas = Optional[Sequence[dict[str, Tensor]]]


def run_block(block: nn.Module, x: Tensor, deltas: Optional[dict[str, Tensor]] = None,
              **kwargs) -> Tensor:
    """One open_clip `ResidualAttentionBlock`, with low-rank deltas added to its attention
    projections for this call only (q, k, v in ``attn.in_proj_weight``, o in
    ``attn.out_proj.weight``): the module's own weights are never written."""
    if not deltas:
        return block(x, **kwargs)
    attn = block.attn
    if not isinstance(attn, nn.MultiheadAttention) or not attn._qkv_same_embed_dim:
        raise NotImplementedError(f"LoRA needs nn.MultiheadAttention blocks with a packed "
                                  f"in_proj_weight; got {type(attn).__name__}")
    weights = {}
    in_proj = [deltas.get(t) for t in ("q", "k", "v")]
    if any(d is not None for d in in_proj):
        w = attn.in_proj_weight  # (3W, W): q, k, v stacked
        zero = w.new_zeros(w.shape[0] // 3, w.shape[1])
        weights["attn.in_proj_weight"] = w + torch.cat(
            [zero if d is None else d.to(w.dtype) for d in in_proj])
    if deltas.get("o") is not None:
        w = attn.out_proj.weight
        weights["attn.out_proj.weight"] = w + deltas["o"].to(w.dtype)
    return functional_call(block, weights, (x,), kwargs, strict=False)


def text_hidden(
        clip: CLIP,
        x: Tensor,
        deep_prompts: Sequence[Tensor] = (),
        prompt_start: int = 1,
        block_deltas: BlockDeltas = None,
) -> Tensor:
    """Text transformer from token embeddings to per-position states after ``ln_final``.

    x: (B, L, W) token embeddings, L <= context_length, prompts already inserted.
    deep_prompts[i]: (k, W) or (B, k, W), replaces positions ``prompt_start:prompt_start+k``
        at the input of layer i + 1 (MaPLe-style deep prompts).
    block_deltas[i]: CLIP-LoRA deltas of layer i (None: the frozen weights).
    Returns (B, L, W).
    """
    seq_len = x.shape[1]
    cast_dtype = clip.transformer.get_cast_dtype()
    x = x.to(cast_dtype) + clip.positional_embedding[:seq_len].to(cast_dtype)
    attn_mask = clip.attn_mask
    if attn_mask is not None:
        attn_mask = attn_mask[:seq_len, :seq_len]
    for i, block in enumerate(clip.transformer.resblocks):
        if 0 < i <= len(deep_prompts):
            x = _replace(x, deep_prompts[i - 1], prompt_start)
        x = run_block(block, x, block_deltas[i] if block_deltas else None, attn_mask=attn_mask)
    return clip.ln_final(x)  # (B, L, W)


def embed_dim(clip: CLIP) -> int:
    """Dimension of the joint embedding space (the text tower's output)."""
    proj = clip.text_projection
    if proj is None:
        return text_width(clip)
    return proj.out_features if isinstance(proj, nn.Linear) else proj.shape[-1]


def project_text(clip: CLIP, x: Tensor) -> Tensor:
    """Apply the text projection to (..., W) states -> (..., D)."""
    if clip.text_projection is None:
        return x
    if isinstance(clip.text_projection, nn.Linear):
        return clip.text_projection(x)
    return x @ clip.text_projection


def pool_text(clip: CLIP, hidden: Tensor, eot_index: Tensor) -> Tensor:
    """Pooled, projected text feature read at each sequence's EOT position.

    hidden: (B, L, W); eot_index: (B,) long. Returns (B, D).
    """
    pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), eot_index]  # (B, W)
    return project_text(clip, pooled)


def eot_index(clip: CLIP, tokens: Tensor) -> Tensor:
    """(B, L) token ids -> (B,) position of the end token, as open_clip pools it."""
    if clip.text_pool_type == "eos":
        return (tokens == clip.text_eos_id).int().argmax(dim=-1)
    return tokens.argmax(dim=-1)


def encode_image(
        visual: VisionTransformer,
        images: Tensor,
        prompts: Sequence[Tensor] = (),
        block_deltas: BlockDeltas = None,
) -> Tensor:
    """ViT forward with visual prompt tokens appended to the token sequence.

    images: (B, 3, H, W).
    prompts[0]: (v, Wv), appended after the class and patch tokens, after the positional
        embedding and before ``ln_pre``; prompts[i] for i >= 1 replaces those v tokens at the
        input of layer i (deep). The prompt tokens are dropped before pooling, so every pool
        type (class token, average, attention pooling) sees the original tokens.
    block_deltas[i]: CLIP-LoRA deltas of layer i (None: the frozen weights).
    Returns (B, D).
    """
    x = visual.conv1(images)  # (B, Wv, g, g)
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)  # (B, g*g, Wv)
    cls = visual.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], -1, -1)
    x = torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype)  # (B, 1+g*g, Wv)
    x = visual.patch_dropout(x)
    n_prompt = prompts[0].shape[-2] if len(prompts) else 0
    if n_prompt:
        x = torch.cat([x, _expand(prompts[0], x)], dim=1)  # (B, 1+g*g+v, Wv)
    x = visual.ln_pre(x)
    for i, block in enumerate(visual.transformer.resblocks):
        if 0 < i < len(prompts):
            x = _replace(x, prompts[i], x.shape[1] - n_prompt)
        x = run_block(block, x, block_deltas[i] if block_deltas else None)
    if n_prompt:
        x = x[:, :-n_prompt]
    pooled, _ = visual._pool(x)
    if visual.proj is not None:
        pooled = pooled @ visual.proj
    return pooled


def _expand(prompt: Tensor, like: Tensor) -> Tensor:
    """(k, W) or (B, k, W) -> (B, k, W) in the dtype of `like`."""
    prompt = prompt.to(like.dtype)
    if prompt.dim() == 2:
        prompt = prompt.unsqueeze(0).expand(like.shape[0], -1, -1)
    return prompt


def _replace(x: Tensor, prompt: Tensor, start: int) -> Tensor:
    """Return x with positions start:start+k replaced by the prompt (no in-place write)."""
    k = prompt.shape[-2]
    return torch.cat([x[:, :start], _expand(prompt, x), x[:, start + k:]], dim=1)


def text_features(clip: CLIP, tokens: Tensor, per_position: bool = False,
                  eot: Optional[Tensor] = None) -> Tensor:
    """Plain CLIP text features from token ids (`CLIP.encode_text` on any window up to the
    context length; no prompts), optionally at every position.

    tokens: (B, L). Returns (B, D), or (B, L, D) when per_position.
    """
    hidden = text_hidden(clip, clip.token_embedding(tokens))
    if per_position:
        return project_text(clip, hidden)
    return pool_text(clip, hidden, eot_index(clip, tokens) if eot is None else eot)
