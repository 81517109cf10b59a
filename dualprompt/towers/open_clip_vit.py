"""Visual prompts on open_clip's own `VisionTransformer` (OpenAI CLIP, ViT-L-14, ...)."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from open_clip.transformer import VisionTransformer

from .blocks import BlockWeights, expand, kept_rows, run_block


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
    resblocks = visual.transformer.resblocks
    # class-token pooling reads one position: the last block computes only that one
    cls_only = visual.attn_pool is None and visual.pool_type == "tok"
    cls = x.new_zeros(x.shape[0], 1, dtype=torch.long) if cls_only else None
    # a block whose prompt outputs the next layer replaces computes the other rows alone
    drop = kept_rows(x, x.shape[1] - n_prompt, n_prompt) if len(prompts) > 1 else None
    for i, block in enumerate(resblocks):
        if 0 < i < len(prompts):
            x = torch.cat([x, expand(prompts[i], x)], dim=1)  # their rows were not kept
        if i == len(resblocks) - 1:
            rows = cls
        else:
            rows = drop if i < len(prompts) - 1 else None
        x = run_block(block, x, block_weights[i] if block_weights else None, rows=rows)
    if n_prompt and not cls_only:
        x = x[:, :-n_prompt]
    pooled, _ = visual._pool(x)
    if visual.proj is not None:
        pooled = pooled @ visual.proj
    return pooled
