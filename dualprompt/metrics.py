"""Cross-modal retrieval metrics (Recall@K) as pure functions of tensors.

Core module: depends on torch only. The torchmetrics wrapper that gathers embeddings across
ranks lives in `dualprompt.training.retrieval_metric`.

Conventions (see docs/method.md, "Evaluation protocol"):
- a query scores a hit at K if ANY of its ground-truth items is in the top K (CLIP_benchmark);
- ranks are 0-based, so "hit at K" means ``rank < K``;
- ties are broken by gallery index, ascending: a gallery item whose score equals the
  ground truth's is ranked ahead of it only if its index is lower (what a stable sort on
  descending score does).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

DEFAULT_KS: tuple[int, ...] = (1, 5, 10)


def _check_inputs(
    image_features: Tensor, text_features: Tensor, text_to_image: Tensor, chunk_size: int
) -> None:
    image_shape, text_shape = tuple(image_features.shape), tuple(text_features.shape)
    if len(image_shape) != 2 or len(text_shape) != 2 or image_shape[1] != text_shape[1]:
        raise ValueError(f"expected features (N, D) and (M, D), got {image_shape} and {text_shape}")
    num_images, num_texts = image_features.shape[0], text_features.shape[0]
    if num_images == 0 or num_texts == 0:
        raise ValueError(f"empty gallery: {num_images} images, {num_texts} captions")
    if text_to_image.shape != (num_texts,):
        raise ValueError(f"text_to_image must be ({num_texts},), got {tuple(text_to_image.shape)}")
    if text_to_image.dtype.is_floating_point or text_to_image.dtype == torch.bool:
        raise ValueError(f"text_to_image must be an integer tensor, got {text_to_image.dtype}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    out_of_range = (text_to_image < 0) | (text_to_image >= num_images)
    if out_of_range.any():
        raise ValueError(
            f"{int(out_of_range.sum())} captions have an image index outside [0, {num_images}), "
            f"e.g. {int(text_to_image[out_of_range][0])}"
        )
    without_caption = int((torch.bincount(text_to_image, minlength=num_images) == 0).sum())
    if without_caption:
        raise ValueError(f"{without_caption} of {num_images} images have no caption")


def _count_ahead(scores: Tensor, gt_index: Tensor) -> Tensor:
    """Rank of the ground truth in each row: items with a higher score, or an equal score and a
    lower index. scores (c, G), gt_index (c,) -> (c,) long."""
    gt_index = gt_index[:, None]  # (c, 1)
    gt_score = scores.gather(1, gt_index)  # (c, 1)
    lower_index = torch.arange(scores.shape[1], device=scores.device) < gt_index  # (c, G)
    ahead = (scores > gt_score) | ((scores == gt_score) & lower_index)  # (c, G)
    return ahead.sum(1, dtype=torch.int32).long()  # one int32 reduction: ~2x faster than bool.sum


def _image_to_text_ranks(
    image_chunk: Tensor, start: int, text_features: Tensor, text_to_image: Tensor
) -> Tensor:
    """Image->text ranks for images ``start .. start + c``. An image's best-ranked caption is its
    highest-scoring one, the lowest-index one among equals. image_chunk (c, D) -> (c,) long."""
    num_queries, num_texts = image_chunk.shape[0], text_features.shape[0]
    scores = image_chunk @ text_features.T  # (c, M)
    in_chunk = (text_to_image >= start) & (text_to_image < start + num_queries)  # (M,)
    gt_text = in_chunk.nonzero().squeeze(1)  # (k,) ascending caption indices
    row = text_to_image[gt_text] - start  # (k,)
    gt_score = scores[row, gt_text]  # (k,) read from the matrix the competitors come from
    best_score = torch.full((num_queries,), float("-inf"), device=scores.device)
    best_score = best_score.scatter_reduce(0, row, gt_score, "amax")  # (c,)
    is_best = gt_score == best_score[row]  # (k,)
    best_text = torch.full((num_queries,), num_texts, device=scores.device)
    best_text = best_text.scatter_reduce(0, row[is_best], gt_text[is_best], "amin")  # (c,)
    return _count_ahead(scores, best_text)


@torch.no_grad()
def retrieval_ranks(
    image_features: Tensor,
    text_features: Tensor,
    text_to_image: Tensor,
    chunk_size: int = 1024,
) -> tuple[Tensor, Tensor]:
    """0-based rank of the ground truth for every query, in both directions.

    Features are assumed L2-normalised, so the score is the dot product (cosine). Scores are
    computed in float32 whatever the input dtype, on the features' device.

    The rank of the ground truth is the number of gallery items ranked ahead of it, counted
    with comparisons against the ground-truth score (no sort): item j is ahead of the ground
    truth g if ``s_j > s_g``, or ``s_j == s_g and j < g``. Ties are thus broken by gallery
    index, ascending, exactly as a stable sort on descending score would. For image->text with
    several captions per image the rank is the minimum over the image's captions (hit if any
    caption is in the top K).

    Queries are processed ``chunk_size`` at a time: peak memory is O(chunk_size * gallery),
    about 0.2 GB above the inputs for N=5000, M=25000 (~3 s on 2 CPU threads). Every query's
    scores come from a single matmul row, so its ground truth and its competitors are compared
    on identically computed values.

    Args:
        image_features: (N, D) image embeddings.
        text_features: (M, D) caption embeddings.
        text_to_image: (M,) integer index in [0, N) of each caption's image. Every image must
            have at least one caption.
        chunk_size: number of queries scored at once.

    Returns:
        i2t_rank: (N,) long, rank of each image's best-ranked caption among all M captions.
        t2i_rank: (M,) long, rank of each caption's image among all N images.

    Raises:
        ValueError: on malformed shapes, out-of-range caption indices, or images without caption.
    """
    _check_inputs(image_features, text_features, text_to_image, chunk_size)
    device = image_features.device
    image_features = image_features.float()
    text_features = text_features.to(device=device, dtype=torch.float32)
    text_to_image = text_to_image.to(device=device, dtype=torch.long)
    num_images, num_texts = image_features.shape[0], text_features.shape[0]

    i2t_rank = torch.cat([
        _image_to_text_ranks(image_features[i : i + chunk_size], i, text_features, text_to_image)
        for i in range(0, num_images, chunk_size)
    ])  # (N,)
    t2i_rank = torch.cat([  # one ground-truth image per caption
        _count_ahead(
            text_features[i : i + chunk_size] @ image_features.T, text_to_image[i : i + chunk_size]
        )
        for i in range(0, num_texts, chunk_size)
    ])  # (M,)
    return i2t_rank, t2i_rank


def recall_at_k(ranks: Tensor, ks: Sequence[int] = DEFAULT_KS) -> dict[int, float]:
    """Share of queries whose ground truth ranks in the top K, as a fraction in [0, 1].

    Args:
        ranks: (Q,) 0-based ranks, e.g. from `retrieval_ranks`.
        ks: cut-offs, each >= 1.

    Returns:
        ``{k: fraction of queries with rank < k}``.
    """
    if ranks.ndim != 1 or ranks.numel() == 0:
        raise ValueError(f"ranks must be a non-empty 1-D tensor, got shape {tuple(ranks.shape)}")
    if any(k < 1 for k in ks):
        raise ValueError(f"every k must be >= 1, got {tuple(ks)}")
    return {int(k): (ranks < k).float().mean().item() for k in ks}


def retrieval_metrics(
    image_features: Tensor,
    text_features: Tensor,
    text_to_image: Tensor,
    ks: Sequence[int] = DEFAULT_KS,
    chunk_size: int = 1024,
) -> dict[str, float]:
    """Recall@K in both directions and their sum, all as PERCENTAGES (0..100).

    Args:
        image_features: (N, D) L2-normalised image embeddings.
        text_features: (M, D) L2-normalised caption embeddings.
        text_to_image: (M,) index in [0, N) of each caption's image.
        ks: cut-offs.
        chunk_size: queries scored at once, see `retrieval_ranks`.

    Returns:
        ``{"i2t_R@k": ..., "t2i_R@k": ... for k in ks, "rsum": ..., "i2t_mean_rank": ...,
        "i2t_median_rank": ..., "t2i_mean_rank": ..., "t2i_median_rank": ...}`` where ``rsum``
        is the sum of the 2 * len(ks) recalls (max 600 with the default ks) and the ranks are
        1-based (1: the first hit is the top result; the median is the lower middle value, as
        `torch.median`).
    """
    i2t_rank, t2i_rank = retrieval_ranks(image_features, text_features, text_to_image, chunk_size)
    metrics: dict[str, float] = {}
    for name, ranks in (("i2t", i2t_rank), ("t2i", t2i_rank)):
        for k, recall in recall_at_k(ranks, ks).items():
            metrics[f"{name}_R@{k}"] = 100.0 * recall
    metrics["rsum"] = sum(metrics.values())
    for name, ranks in (("i2t", i2t_rank), ("t2i", t2i_rank)):
        metrics[f"{name}_mean_rank"] = ranks.float().mean().item() + 1
        metrics[f"{name}_median_rank"] = ranks.median().item() + 1.0
    return metrics


def summarize_domains(per_domain: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Add an ``"AVG"`` entry: the mean over domains of every metric.

    The mean of the rsums equals the rsum of the averaged recalls, so ``AVG["rsum"]`` is both.

    Args:
        per_domain: ``{domain: {metric: value}}``; every domain must report the same metrics.

    Returns:
        A new dict: the per-domain dicts (copied, in input order) followed by ``"AVG"``.
    """
    if not per_domain:
        raise ValueError("per_domain is empty")
    if "AVG" in per_domain:
        raise ValueError("'AVG' is reserved for the mean over domains")
    keys = list(next(iter(per_domain.values())))
    for domain, metrics in per_domain.items():
        if set(metrics) != set(keys):
            raise ValueError(f"domain {domain!r} has {sorted(metrics)}, expected {sorted(keys)}")
    summary = {domain: dict(metrics) for domain, metrics in per_domain.items()}
    num_domains = len(per_domain)
    summary["AVG"] = {key: sum(m[key] for m in per_domain.values()) / num_domains for key in keys}
    return summary
