"""Dynamic token re-weighting: how much each caption token depends on the image.

w_j = |S(token_j, I) - S(token_j, I_blank)| (method.md), where S is the cosine between the
token's contextual feature from the frozen text tower (through ``ln_final`` and the text
projection) and the frozen image feature, and I_blank is the mean-colour image: all zeros
after CLIP's normalisation, i.e. the normalisation mean colour. Weights are normalised to mean
1 over each caption's content tokens; start, end and padding positions get 1. They depend on
the (caption, image) pair, so they are a training-time signal only.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import towers
from .tokens import fit_to_window


@torch.no_grad()
def frozen_token_features(clip: nn.Module, tokens: Tensor) -> Tensor:
    """Frozen text features at every position: (B, L) ids -> (B, L', D), trimmed after the
    longest caption where that is exact (`TextTower.trims_exactly`). Position `eot` holds the
    caption's plain CLIP text feature."""
    tower = towers.text_tower(clip)
    eot = towers.end_index(tower, tokens)
    fitted, _, _ = fit_to_window(tokens, eot, 0, trim=tower.trims_exactly)
    return towers.text_features(clip, fitted, per_position=True)


@torch.no_grad()
def blank_image_features(clip: nn.Module, dtype: Optional[torch.dtype] = None) -> Tensor:
    """(1, D) frozen features of the mean-colour image (zeros after normalisation)."""
    weight = next(clip.visual.parameters())
    blank = torch.zeros(1, 3, *towers.image_size(clip), device=weight.device,
                        dtype=dtype or weight.dtype)
    return clip.encode_image(blank)


@torch.no_grad()
def token_weights(clip: nn.Module, tokens: Tensor, images: Optional[Tensor] = None, *,
                  image_features: Optional[Tensor] = None, strength: float = 1.0,
                  eps: float = 1e-6, blank_features: Optional[Tensor] = None,
                  token_features: Optional[Tensor] = None) -> Tensor:
    """Per-token weights of the dynamic re-weighting, from the frozen CLIP.

    clip: the frozen open_clip `CLIP` (for a `DualPromptCLIP`, pass `model.clip`).
    tokens: (B, L) caption token ids; images: (B, 3, H, W) the paired, preprocessed images
        (or image_features: (B, D) their frozen features, to reuse them).
    strength: s in [0, 1]; returns 1 + s * (w - 1), so 0 switches re-weighting off.
    blank_features: (1, D) `blank_image_features(clip)`, to reuse them (a constant of a
        frozen CLIP); token_features: (B, L', D) `frozen_token_features(clip, tokens)`, to
        share that text pass with other frozen uses of the same captions.
    Returns (B, L) weights, 1 outside the content tokens.
    """
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be in [0, 1], got {strength}")
    if image_features is None:
        if images is None:
            raise ValueError("pass images or image_features")
        image_features = clip.encode_image(images)
    device = tokens.device
    if blank_features is None:
        blank_features = blank_image_features(clip, image_features.dtype)
    if token_features is None:
        token_features = frozen_token_features(clip, tokens)
    tower = towers.text_tower(clip)
    eot = towers.end_index(tower, tokens)
    seq_len = token_features.shape[1]
    per_token = F.normalize(token_features.float(), dim=-1)  # (B, L', D)
    s_image = torch.einsum("bld,bd->bl", per_token, F.normalize(image_features.float(), dim=-1))
    s_blank = per_token @ F.normalize(blank_features.float(), dim=-1)[0]  # (B, L')
    raw = (s_image - s_blank).abs()

    content = towers.content_mask(tower, tokens[:, :seq_len], eot)  # (B, L')
    mean = (raw * content).sum(1, keepdim=True) / content.sum(1, keepdim=True).clamp(min=1)
    w = torch.where(content, raw / (mean + eps), torch.ones_like(raw))
    w = 1.0 + strength * (w - 1.0)
    out = torch.ones(tokens.shape, device=device)
    out[:, :seq_len] = w
    return out
