"""Visual prompts on open_clip's own `VisionTransformer` (OpenAI CLIP, ViT-L-14, ...)."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from open_clip.transformer import VisionTransformer

from .blocks import BlockWeights, expand, replace, run_block


def blocks(visual: VisionTransformer) -> nn.ModuleList:
    return visual.transformer.resblocks


def layers(visual: VisionTransformer) -> int:
    return len(blocks(visual))


def width(visual: VisionTransformer) -> int:
    return visual.class_embedding.shape[0]


def encode(visual: VisionTransformer, images: Tensor, prompts: Sequence[Tensor] = (),
           block_weights: BlockWeights = None) -> Tensor:
    """`VisionTransformer.forward` with visual prompt tokens appended to the token sequence.

    images: (B, 3, H, W).
    prompts[0]: (v, Wv), appended after the class and patch tokens, after the positional
        embedding and before ``ln_pre``; prompts[i] for i >= 1 replaces those v tokens at the
        input of layer i (deep). The prompt tokens are dropped before pooling, so every pool
        type (class token, average, attention pooling) sees the original tokens.
    block_weights[i]: layer i's attention weights with CLIP-LoRA's deltas added, or its
        `LowRank` factors (`blocks.LoRAWeights`; None: the frozen weights).
    Returns (B, D).
    """
    if not visual.transformer.batch_first:
        raise NotImplementedError("the image transformer is not batch-first "
                                  "(open_clip < 2.2 layout)")
    x = visual.conv1(images)  # (B, Wv, g, g)
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)  # (B, g*g, Wv)
    cls = visual.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], -1, -1)
    x = torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype)  # (B, 1+g*g, Wv)
    x = visual.patch_dropout(x)
    n_prompt = prompts[0].shape[-2] if len(prompts) else 0
    if n_prompt:
        x = torch.cat([x, expand(prompts[0], x)], dim=1)  # (B, 1+g*g+v, Wv)
    x = visual.ln_pre(x)
    for i, block in enumerate(visual.transformer.resblocks):
        if 0 < i < len(prompts):
            x = replace(x, prompts[i], x.shape[1] - n_prompt)
        x = run_block(block, x, block_weights[i] if block_weights else None)
    if n_prompt:
        x = x[:, :-n_prompt]
    pooled, _ = visual._pool(x)
    if visual.proj is not None:
        pooled = pooled @ visual.proj
    return pooled
