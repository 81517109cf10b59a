"""Token-id bookkeeping: making room for prompt vectors and trimming padding."""
from __future__ import annotations

import torch
from torch import Tensor


def fit_to_window(tokens: Tensor, eot: Tensor, prompt_length: int,
                  trim: bool = True) -> tuple[Tensor, Tensor, int]:
    """Make room for `prompt_length` vectors after the start token, keeping the end token.

    tokens: (B, L) ids from an open_clip tokenizer (SOT first, EOT at `eot`, zero padding).
    eot: (B,) position of each caption's end token.
    Captions whose end token would fall outside the L - prompt_length kept positions are
    truncated: their last kept position gets the end token. With `trim`, trailing columns
    after the longest caption's end token are dropped too; that is exact under a causal text
    mask (positions after EOT never influence the pooled feature).
    Returns (tokens (B, L'), eot (B,), L' + prompt_length <= L).
    """
    keep = tokens.shape[1] - prompt_length
    too_long = eot >= keep
    if bool(too_long.any()):
        rows = too_long.nonzero(as_tuple=True)[0]
        tokens = tokens.clone()
        tokens[rows, keep - 1] = tokens[rows, eot[rows]]
        eot = torch.where(too_long, torch.full_like(eot, keep - 1), eot)
    if trim:
        keep = min(keep, int(eot.max()) + 1)
    return tokens[:, :keep], eot, keep + prompt_length


def length_groups(eot: Tensor, groups: int) -> list[Tensor]:
    """Split a batch into at most `groups` groups of captions of similar length.

    eot: (B,) end-token positions. Returns index tensors (ascending length, sizes differing by
    at most one) that together hold every row once. Encoding each group trimmed to its own
    longest caption is exact under a causal text mask, and cheaper than padding every caption
    to the batch's longest.
    """
    order = torch.argsort(eot, stable=True)  # (B,)
    return list(order.tensor_split(max(1, min(groups, eot.shape[0]))))
