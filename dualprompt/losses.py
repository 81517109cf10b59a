"""Losses as pure functions of features. Features are L2-normalised; maths runs in fp32."""
from __future__ import annotations

import functools
from typing import Callable, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor


def _autocast_off(loss: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """Run `loss` with autocast off: under bf16-mixed / 16-mixed, autocast would run its
    matmuls in low precision whatever the `.float()` casts say."""
    @functools.wraps(loss)
    def wrapper(image_features: Tensor, *args, **kwargs) -> Tensor:
        with torch.autocast(image_features.device.type, enabled=False):
            return loss(image_features, *args, **kwargs)
    return wrapper


@_autocast_off
def contrastive_loss(image_features: Tensor, text_features: Tensor,
                     logit_scale: Union[Tensor, float],
                     text_to_image: Optional[Tensor] = None) -> Tensor:
    """Symmetric InfoNCE over a batch, with any number of captions per image.

    image_features: (N, D); text_features: (M, D).
    text_to_image: (M,) index of each caption's image; None means M == N and caption i
        describes image i.
    logit_scale: the multiplier (already exponentiated), scalar.
    text->image is the usual cross-entropy; image->text treats all captions of an image as
    positives (-log of their total probability, the "any caption" meaning of Recall@K);
    images without a caption in the batch are left out of that direction.
    Returns the mean of the two directions, a scalar.
    """
    n, m = image_features.shape[0], text_features.shape[0]
    if text_to_image is None:
        if n != m:
            raise ValueError(f"{n} images and {m} captions: pass text_to_image")
        text_to_image = torch.arange(n, device=image_features.device)
    logits = logit_scale * image_features.float() @ text_features.float().t()  # (N, M)
    t2i = F.cross_entropy(logits.t(), text_to_image)
    positive = text_to_image[None, :] == torch.arange(n, device=logits.device)[:, None]  # (N, M)
    has_caption = positive.any(dim=1)
    log_p = logits.log_softmax(dim=1).masked_fill(~positive, float("-inf"))
    i2t = -torch.logsumexp(log_p[has_caption], dim=1).mean()
    return (i2t + t2i) / 2


@_autocast_off
def gathered_contrastive_loss(image_features: Tensor, text_features: Tensor,
                              all_image_features: Tensor, all_text_features: Tensor,
                              logit_scale: Union[Tensor, float], offset: int) -> Tensor:
    """This rank's share of the symmetric InfoNCE over a batch gathered from all ranks.

    image_features, text_features: (B, D) this rank's pairs (caption i describes image i);
    all_*: (W*B, D) the same features gathered from every rank in rank order (with gradients,
    e.g. Lightning's `all_gather(sync_grads=True)`); offset: this rank's first row, rank * B.
    Rows are this rank's queries against the global gallery (open_clip's `local_loss`), so
    the DDP-averaged gradient equals the gradient of the loss over the global batch; with one
    rank it equals `contrastive_loss`.
    """
    labels = torch.arange(image_features.shape[0], device=image_features.device) + offset
    i2t = logit_scale * image_features.float() @ all_text_features.float().t()  # (B, W*B)
    t2i = logit_scale * text_features.float() @ all_image_features.float().t()  # (B, W*B)
    return (F.cross_entropy(i2t, labels) + F.cross_entropy(t2i, labels)) / 2


@_autocast_off
def sigmoid_loss(image_features: Tensor, text_features: Tensor,
                 logit_scale: Union[Tensor, float], logit_bias: Union[Tensor, float],
                 text_to_image: Optional[Tensor] = None) -> Tensor:
    """SigLIP's pairwise sigmoid loss (Zhai et al. 2023), with any number of captions per
    image: every (image, caption) pair is a binary problem, positive when the caption describes
    the image. -sum log sigmoid(+-(scale * cos + bias)) / N, as open_clip's `SigLipLoss`.

    image_features: (N, D); text_features: (M, D); text_to_image as in `contrastive_loss`.
    logit_scale: the multiplier (already exponentiated); logit_bias: the model's bias.
    """
    n, m = image_features.shape[0], text_features.shape[0]
    if text_to_image is None:
        if n != m:
            raise ValueError(f"{n} images and {m} captions: pass text_to_image")
        text_to_image = torch.arange(n, device=image_features.device)
    logits = logit_scale * image_features.float() @ text_features.float().t() + logit_bias
    positive = text_to_image[None, :] == torch.arange(n, device=logits.device)[:, None]
    signs = positive.float() * 2 - 1  # (N, M): +1 positive, -1 negative
    return -F.logsigmoid(signs * logits).sum() / n


@_autocast_off
def gathered_sigmoid_loss(image_features: Tensor, all_text_features: Tensor,
                          logit_scale: Union[Tensor, float], logit_bias: Union[Tensor, float],
                          offset: int) -> Tensor:
    """This rank's share of the sigmoid loss over a batch gathered from all ranks: its images
    against every rank's captions (gathered with gradients), caption offset + i describing
    image i. As with `gathered_contrastive_loss`, the DDP-averaged gradient is the gradient
    of the loss over the global batch; with one rank it equals `sigmoid_loss`."""
    b = image_features.shape[0]
    logits = (logit_scale * image_features.float() @ all_text_features.float().t()
              + logit_bias)  # (B, W*B)
    rows = torch.arange(b, device=logits.device)
    signs = -torch.ones_like(logits)
    signs[rows, rows + offset] = 1
    return -F.logsigmoid(signs * logits).sum() / b


@_autocast_off
def category_loss(image_features: Tensor, positive_features: Tensor, negative_features: Tensor,
                  logit_scale: Union[Tensor, float],
                  negative_weights: Optional[Tensor] = None,
                  negative_mask: Optional[Tensor] = None) -> Tensor:
    """Category-aware negative loss: -log(e^s0 / (e^s0 + sum_k w_k e^sk)), batch mean.

    image_features: (B, D); positive_features: (B, D) each image's positive caption;
    negative_features: (B, K, D) its negative captions.
    negative_weights: (B, K) w_k (see `category_weights`), 1 if None.
    negative_mask: (B, K) bool, False for padding negatives (a record with fewer than K).
    """
    img = image_features.float()
    s0 = logit_scale * (img * positive_features.float()).sum(-1)  # (B,)
    sk = logit_scale * torch.einsum("bd,bkd->bk", img, negative_features.float())  # (B, K)
    if negative_weights is not None:
        sk = sk + negative_weights.float().log()
    if negative_mask is not None:
        sk = sk.masked_fill(~negative_mask, float("-inf"))
    logits = torch.cat([s0[:, None], sk], dim=1)  # (B, 1+K)
    return (torch.logsumexp(logits, dim=1) - s0).mean()


@_autocast_off
def sigmoid_category_loss(image_features: Tensor, positive_features: Tensor,
                          negative_features: Tensor, logit_scale: Union[Tensor, float],
                          logit_bias: Union[Tensor, float],
                          negative_weights: Optional[Tensor] = None,
                          negative_mask: Optional[Tensor] = None) -> Tensor:
    """The category-aware negatives in SigLIP's terms, for sigmoid-loss models:
    -log sigmoid(s0 + b) - sum_k w_k log sigmoid(-(s_k + b)), batch mean, with s = scale * cos.
    Arguments as in `category_loss`, plus the model's logit bias."""
    img = image_features.float()
    s0 = logit_scale * (img * positive_features.float()).sum(-1) + logit_bias  # (B,)
    sk = logit_scale * torch.einsum("bd,bkd->bk", img, negative_features.float()) + logit_bias
    terms = -F.logsigmoid(-sk)  # (B, K)
    if negative_weights is not None:
        terms = terms * negative_weights.float()
    if negative_mask is not None:
        terms = terms.masked_fill(~negative_mask, 0.0)
    return (-F.logsigmoid(s0) + terms.sum(1)).mean()


def category_weights(negative_categories: Tensor, image_categories: Tensor,
                     alpha: float) -> Tensor:
    """w = 1 + alpha where a negative's category equals its image's, else 1.

    negative_categories: (B, K) integer category ids; image_categories: (B,). Returns (B, K).
    Whether "category" is the fine class or the meta-category is the caller's choice of ids.
    """
    same = negative_categories == image_categories[:, None]
    return 1.0 + alpha * same.float()


@_autocast_off
def feature_consistency(features: Tensor, frozen_features: Tensor,
                        distance: str = "cosine") -> Tensor:
    """How far learned features moved from the frozen CLIP's, batch mean (no grad to frozen).

    features, frozen_features: (N, D), L2-normalised.
    distance: "cosine", 1 - mean cosine (KgCoOp's knowledge-guided term); "l1", the mean
        absolute difference (PromptSRC's self-consistency terms).
    """
    features, frozen = features.float(), frozen_features.detach().float()
    if distance == "cosine":
        return 1.0 - F.cosine_similarity(features, frozen, dim=-1, eps=1e-7).mean()
    if distance == "l1":
        return F.l1_loss(features, frozen, reduction="mean")
    raise ValueError(f"distance must be cosine or l1, got {distance!r}")


@_autocast_off
def logit_consistency(logits: Tensor, frozen_logits: Tensor) -> Tensor:
    """KL(frozen || learned) of each row's softmax, summed and divided by the number of
    logits (PromptSRC's L_SCL-logits). logits, frozen_logits: (N, M)."""
    return F.kl_div(F.log_softmax(logits.float(), dim=1),
                    F.log_softmax(frozen_logits.detach().float(), dim=1),
                    reduction="sum", log_target=True) / logits.numel()
