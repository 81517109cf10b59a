"""Visual prompts on timm Vision Transformers as open_clip wraps them (`TimmModel`).

Two timm families: `VisionTransformer` (SigLIP / SigLIP2's towers, attention-pool ``map``
heads) and `Eva` (EVA02, PE-Core: rotary position embeddings on the patch tokens). The
prompt tokens are appended after the position embedding, replaced per block when deep, and
dropped before the trunk's head, so the pooling (class token, average, attention pool) sees
the original tokens. In `Eva`, rotary embeddings rotate every token after the class / register
tokens; the prompt tokens get the identity rotation (sin 0, cos 1): they have no position.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from .blocks import BlockWeights, expand, replace, run_block

try:  # timm comes with open_clip; these are the classes its CLIP towers use
    from timm.models.eva import Eva
    from timm.models.vision_transformer import VisionTransformer as TimmViT
except ImportError:  # pragma: no cover
    Eva = TimmViT = None


def is_timm_vit(visual: nn.Module) -> bool:
    trunk = getattr(visual, "trunk", None)
    return Eva is not None and isinstance(trunk, (TimmViT, Eva))


def blocks(visual: nn.Module) -> nn.Sequential:
    return visual.trunk.blocks


def layers(visual: nn.Module) -> int:
    return len(blocks(visual))


def width(visual: nn.Module) -> int:
    return visual.trunk.embed_dim


def encode(visual: nn.Module, images: Tensor, prompts: Sequence[Tensor] = (),
           block_weights: BlockWeights = None) -> Tensor:
    """`TimmModel.forward` (trunk features, trunk head, open_clip head) with visual prompts.

    images: (B, 3, H, W); prompts and block_weights as in `open_clip_vit.encode`.
    Returns (B, D).
    """
    trunk = visual.trunk
    x = trunk.patch_embed(images)
    rope: Optional[Tensor] = None
    if isinstance(trunk, Eva):
        if getattr(trunk, "rope_mixed", False):
            raise NotImplementedError(f"{type(trunk).__name__} with depth-dependent (mixed) "
                                      "rotary embeddings is not supported")
        x, rope = trunk._pos_embed(x)  # patch dropout (training only) is inside
    else:
        x = trunk.patch_drop(trunk._pos_embed(x))
    n_prompt = prompts[0].shape[-2] if len(prompts) else 0
    if n_prompt:
        x = torch.cat([x, expand(prompts[0], x)], dim=1)
        if rope is not None:
            rope = _identity_rotation(rope, n_prompt)
    x = trunk.norm_pre(x)
    kwargs = {"rope": rope} if isinstance(trunk, Eva) else {}
    for i, block in enumerate(trunk.blocks):
        if 0 < i < len(prompts):
            x = replace(x, prompts[i], x.shape[1] - n_prompt)
        x = run_block(block, x, block_weights[i] if block_weights else None, **kwargs)
    x = trunk.norm(x)
    if n_prompt:
        x = x[:, :-n_prompt]
    return visual.head(trunk.forward_head(x))


def _identity_rotation(rope: Tensor, n: int) -> Tensor:
    """Rotary embeddings (..., N, 2d) as [sin | cos], with n rows of sin 0 / cos 1 added."""
    sin, cos = rope.chunk(2, dim=-1)
    shape = (*sin.shape[:-2], n, sin.shape[-1])
    return torch.cat([torch.cat([sin, sin.new_zeros(shape)], dim=-2),
                      torch.cat([cos, cos.new_ones(shape)], dim=-2)], dim=-1)
