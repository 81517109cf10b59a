"""Running open_clip's towers from their parts, with prompt vectors inserted.

This package is the one place that reaches below open_clip's and timm's public APIs, one
module per tower family, each with its parity test (tests/test_towers.py,
tests/test_backbones.py); the open_clip and timm ranges in pyproject.toml are the ones those
tests ran on:
- `text`: the text towers of `CLIP` and of `CustomTextCLIP` (open_clip's `TextTransformer`);
- `open_clip_vit`: open_clip's `VisionTransformer`;
- `timm_vit`: timm `VisionTransformer` and `Eva` inside open_clip's `TimmModel`;
- `blocks`: a transformer block run with CLIP-LoRA (`LoRAWeights`, `LowRank`).
Any other image tower (ResNet, ConvNeXt, ...) runs as open_clip runs it and takes no visual
prompts or LoRA (`takes_visual_prompts`).
"""
from __future__ import annotations

from typing import Optional, Sequence

from torch import Tensor, nn

from open_clip.model import CLIP
from open_clip.transformer import VisionTransformer

from . import open_clip_vit, timm_vit
from .blocks import (BlockWeights, LoRAWeights, LowRank, mlp_width, run_block,
                     takes_low_rank_path)
from .text import (TextTower, content_mask, end_index, output_dim, project, text_hidden,
                   text_tower)

__all__ = ["BlockWeights", "LoRAWeights", "LowRank", "TextTower", "content_mask", "embed_dim",
           "encode_image", "end_index", "image_size", "is_clip_vit", "mlp_width", "project",
           "run_block", "takes_low_rank_path", "takes_visual_prompts", "text_blocks",
           "text_features", "text_hidden", "text_layers", "text_tower", "text_width",
           "vision_blocks", "vision_layers", "vision_width"]


def _vit_family(visual: nn.Module):
    if isinstance(visual, VisionTransformer):
        return open_clip_vit
    if timm_vit.is_timm_vit(visual):
        return timm_vit
    return None


def is_clip_vit(clip: nn.Module) -> bool:
    """The original layout: open_clip `CLIP` with its own ViT (OpenAI CLIP, ViT-L-14, ...)."""
    return isinstance(clip, CLIP) and isinstance(clip.visual, VisionTransformer)


def takes_visual_prompts(clip: nn.Module) -> bool:
    """Whether the image tower is a ViT that dualprompt can insert visual tokens into."""
    return _vit_family(clip.visual) is not None


def _vit(clip_or_visual: nn.Module, what: str):
    visual = getattr(clip_or_visual, "visual", clip_or_visual)
    family = _vit_family(visual)
    if family is None:
        trunk = getattr(visual, "trunk", None)
        name = type(visual).__name__ + (f" ({type(trunk).__name__})" if trunk is not None
                                         else "")
        raise NotImplementedError(
            f"{what} need a ViT image tower (open_clip VisionTransformer, timm "
            f"VisionTransformer / Eva); this model's image tower is {name}. Text prompts and "
            "adapters work on it: set prompt.visual_length=0 (and prompt.lora_rank=0).")
    return family, visual


def text_layers(clip: nn.Module) -> int:
    return text_tower(clip).layers


def text_blocks(clip: nn.Module) -> nn.ModuleList:
    return text_tower(clip).transformer.resblocks


def text_width(clip: nn.Module) -> int:
    return text_tower(clip).width


def vision_layers(clip: nn.Module) -> Optional[int]:
    """Transformer blocks of the image tower; None for a tower without them (ResNet)."""
    family = _vit_family(clip.visual)
    return family.layers(clip.visual) if family is not None else None


def vision_blocks(clip: nn.Module) -> Sequence[nn.Module]:
    """The image tower's transformer blocks, in order (a ViT's; raises for any other)."""
    family, visual = _vit(clip, "visual prompts and image-tower LoRA")
    return family.blocks(visual)


def vision_width(clip: nn.Module) -> int:
    family, visual = _vit(clip, "visual prompts")
    return family.width(visual)


def embed_dim(clip: nn.Module) -> int:
    """Dimension of the joint embedding space (the text tower's output)."""
    return output_dim(text_tower(clip))


def image_size(clip: nn.Module) -> tuple[int, int]:
    size = clip.visual.image_size
    return (size, size) if isinstance(size, int) else tuple(size)


def encode_image(visual: nn.Module, images: Tensor, prompts: Sequence[Tensor] = (),
                 block_weights: BlockWeights = None) -> Tensor:
    """The image tower's (B, D) features, with visual prompts and LoRA deltas if given;
    without them, the tower as open_clip runs it (any tower)."""
    if not len(prompts) and not block_weights:
        return visual(images)
    family, visual = _vit(visual, "visual prompts and image-tower LoRA")
    return family.encode(visual, images, prompts, block_weights)


def text_features(clip: nn.Module, tokens: Tensor, per_position: bool = False,
                  end: Optional[Tensor] = None, layers: Optional[int] = None) -> Tensor:
    """Plain CLIP text features from token ids (`encode_text` on any window up to the context
    length that the tower pools exactly; no prompts), optionally at every position.

    tokens: (B, L). layers: read out after the first `layers` blocks (None: all of them).
    Returns (B, D), or (B, L, D) when per_position.
    """
    tower = text_tower(clip)
    x = tower.token_embedding(tokens)
    if per_position:
        return project(tower, text_hidden(tower, x, layers=layers))
    at = end_index(tower, tokens) if end is None else end
    return project(tower, text_hidden(tower, x, layers=layers, at=at))
