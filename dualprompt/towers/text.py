"""Running open_clip's text towers from token embeddings, with prompt vectors inserted.

Two layouts hold the same parts under different names: `CLIP` keeps the text tower's modules
on the model itself (OpenAI CLIP, ViT-L-14, RN50, ...), `CustomTextCLIP` in a native
`TextTransformer` at ``model.text`` (SigLIP / SigLIP2, EVA02, PE-Core, ...). `text_tower`
is the one function that reads either; everything else works on the `TextTower` view.
Hugging Face text towers (`HFTextEncoder`) and CoCa's appended class token are refused.

What differs between towers and matters here:
- the mask: causal (CLIP, EVA02, PE-Core) or none (SigLIP). Under a causal mask, positions
  after the pooled token never influence it, so trimming padding is exact; without one, the
  padding is attended to and the full window is kept (`TextTower.trims_exactly`).
- the pooled position: the end token (``argmax``: the largest id, CLIP's tokenizer; ``eos``:
  the first `eos_id`) or the window's last position (``last``, SigLIP).
Prompt vectors always go after the first position (CLIP's start token, Gemma's BOS).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch
from torch import Tensor, nn

from open_clip.model import CLIP, CustomTextCLIP
from open_clip.transformer import TextTransformer

from .blocks import BlockWeights, insert, kept_rows, run_block

POOL_TYPES = ("argmax", "eos", "last")


@dataclass(frozen=True)
class TextTower:
    """The parts of an open_clip text tower, wherever the model class keeps them.

    Build it per call (`text_tower(clip)`): it holds references, and `.to(device)` replaces
    buffers such as the causal mask."""

    token_embedding: nn.Embedding
    positional_embedding: Tensor  # (context, W)
    transformer: nn.Module  # open_clip Transformer: .resblocks, .get_cast_dtype()
    ln_final: nn.Module
    projection: Optional[Union[Tensor, nn.Linear]]
    attn_mask: Optional[Tensor]  # (context, context) additive causal mask, or None
    pool_type: str
    eos_id: Optional[int]
    pad_id: int

    @property
    def trims_exactly(self) -> bool:
        """Whether dropping the columns after the pooled token leaves the feature unchanged."""
        return self.attn_mask is not None and self.pool_type in ("argmax", "eos")

    @property
    def width(self) -> int:
        return self.token_embedding.weight.shape[1]

    @property
    def layers(self) -> int:
        return len(self.transformer.resblocks)


def text_tower(clip: nn.Module) -> TextTower:
    """The `TextTower` of an open_clip `CLIP` or `CustomTextCLIP`; NotImplementedError,
    naming the class, for text towers dualprompt cannot prompt."""
    if isinstance(clip, CLIP):
        tower = TextTower(clip.token_embedding, clip.positional_embedding, clip.transformer,
                          clip.ln_final, clip.text_projection, clip.attn_mask,
                          clip.text_pool_type, getattr(clip, "text_eos_id", None), 0)
    elif isinstance(clip, CustomTextCLIP) and isinstance(clip.text, TextTransformer):
        text = clip.text
        if text.cls_emb is not None or text.use_pad_mask:
            raise NotImplementedError(
                f"{type(clip).__name__}: a TextTransformer with an appended class token or a "
                "padding mask (CoCa-style) is not supported")
        tower = TextTower(text.token_embedding, text.positional_embedding, text.transformer,
                          text.ln_final, text.text_projection, text.attn_mask, text.pool_type,
                          getattr(text, "eos_id", None), text.pad_id)
    else:
        text = getattr(clip, "text", None)
        raise NotImplementedError(
            f"dualprompt prompts open_clip's native text towers (CLIP, CustomTextCLIP with a "
            f"TextTransformer); got {type(clip).__name__}"
            + (f" with a {type(text).__name__} text tower" if text is not None else "")
            + " (Hugging Face text towers and CoCa are not supported)")
    if tower.pool_type not in POOL_TYPES:
        raise NotImplementedError(f"{type(clip).__name__}: text pool type "
                                  f"{tower.pool_type!r} is not supported {POOL_TYPES}")
    if not tower.transformer.batch_first:
        raise NotImplementedError(f"the text transformer of {type(clip).__name__} is not "
                                  "batch-first (open_clip < 2.2 layout)")
    return tower


def end_index(tower: TextTower, tokens: Tensor) -> Tensor:
    """(B, L) token ids -> (B,) the position the tower pools, as open_clip pools it."""
    if tower.pool_type == "last":
        return torch.full(tokens.shape[:1], tokens.shape[1] - 1, dtype=torch.long,
                          device=tokens.device)
    if tower.pool_type == "eos":
        return (tokens == tower.eos_id).int().argmax(dim=-1)
    return tokens.argmax(dim=-1)


def content_mask(tower: TextTower, tokens: Tensor, end: Tensor) -> Tensor:
    """(B, L) True at a caption's own tokens: after the first position, before the pooled
    one, and not padding."""
    positions = torch.arange(tokens.shape[1], device=tokens.device)
    return ((positions[None, :] > 0) & (positions[None, :] < end[:, None])
            & (tokens != tower.pad_id))


def text_hidden(tower: TextTower, x: Tensor, deep_prompts: Sequence[Tensor] = (),
                prompt_start: int = 1, block_weights: BlockWeights = None,
                layers: Optional[int] = None, at: Optional[Tensor] = None) -> Tensor:
    """The transformer from token embeddings to per-position states after ``ln_final``.

    x: (B, L, W) token embeddings, L <= context length, prompts already inserted.
    deep_prompts[i]: (k, W) or (B, k, W), replaces positions ``prompt_start:prompt_start+k``
        at the input of layer i + 1 (MaPLe-style deep prompts).
    block_weights[i]: layer i's attention weights with CLIP-LoRA's deltas added, or its
        `LowRank` factors (`blocks.LoRAWeights`; None: the frozen weights).
    layers: run only the first `layers` blocks (None: all), then ``ln_final``.
    at: (B,) the pooled positions, to read out only those: the last block then computes them
        alone (`blocks.run_block`).
    Returns (B, L, W), or (B, W) with `at`.
    """
    seq_len = x.shape[1]
    cast_dtype = tower.transformer.get_cast_dtype()
    x = x.to(cast_dtype) + tower.positional_embedding[:seq_len].to(cast_dtype)
    attn_mask = tower.attn_mask
    if attn_mask is not None:
        attn_mask = attn_mask[:seq_len, :seq_len]
    run = tower.transformer.resblocks[:layers]
    # a block whose prompt outputs the next layer replaces computes the other rows alone
    drop = kept_rows(x, prompt_start, deep_prompts[0].shape[-2]) if len(deep_prompts) else None
    for i, block in enumerate(run):
        if 0 < i <= len(deep_prompts):
            x = insert(x, deep_prompts[i - 1], prompt_start)  # their rows were not kept
        if i == len(run) - 1:
            rows = None if at is None else at[:, None]
        else:
            rows = drop if i < len(deep_prompts) else None
        x = run_block(block, x, block_weights[i] if block_weights else None, rows=rows,
                      attn_mask=attn_mask)
    x = tower.ln_final(x)  # (B, L, W), or (B, 1, W) with `at`
    return x if at is None else x[:, 0]


def project(tower: TextTower, x: Tensor) -> Tensor:
    """The text projection of (..., W) states -> (..., D)."""
    if tower.projection is None:
        return x
    if isinstance(tower.projection, nn.Linear):
        return tower.projection(x)
    return x @ tower.projection


def output_dim(tower: TextTower) -> int:
    """Dimension of the joint embedding space (the text tower's output)."""
    proj = tower.projection
    if proj is None:
        return tower.width
    return proj.out_features if isinstance(proj, nn.Linear) else proj.shape[-1]
