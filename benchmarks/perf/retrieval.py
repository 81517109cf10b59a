"""Recall@K: dualprompt's `retrieval_metrics` vs torchmetrics `RetrievalHitRate`, same numbers.

Hit rate@K of a query = 1 if any of its positives is in its top K; averaged over queries it is
Recall@K in the CLIP_benchmark sense, in both directions: image->text (5 positive captions
per image) and text->image (1 positive image per caption).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from dualprompt.metrics import retrieval_metrics

KS = (1, 5, 10)


def random_embeddings(num_images: int, per_image: int = 5, dim: int = 512, noise: float = 1.6,
                      seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """Normalised (N, D) image and (N*per_image, D) caption embeddings, each caption a noisy
    copy of its image's (so recalls are neither 0 nor 100), and (M,) caption -> image."""
    gen = torch.Generator().manual_seed(seed)
    image = F.normalize(torch.randn(num_images, dim, generator=gen), dim=-1)
    text_to_image = torch.arange(num_images).repeat_interleave(per_image)
    noise = noise / dim ** 0.5 * torch.randn(len(text_to_image), dim, generator=gen)
    noisy = image[text_to_image] + noise
    return image, F.normalize(noisy, dim=-1), text_to_image


def recall_dualprompt(image: Tensor, text: Tensor, text_to_image: Tensor,
                      ks: Sequence[int] = KS) -> dict[str, float]:
    """Percentages, as `retrieval_metrics` reports them (rsum and the ranks left out)."""
    metrics = retrieval_metrics(image, text, text_to_image, ks)
    return {k: v for k, v in metrics.items() if "_R@" in k}


def recall_torchmetrics(image: Tensor, text: Tensor, text_to_image: Tensor,
                        ks: Sequence[int] = KS,
                        query_chunk: Optional[int] = None) -> dict[str, float]:
    """The same percentages with torchmetrics `RetrievalHitRate(top_k=k)`, one metric per k.

    Its input is the dense (queries x gallery) triple preds / target / indexes. query_chunk:
    None feeds every query of a direction in one update (the plain use); an int feeds that many
    queries per metric object and averages the chunks weighted by their query counts, which
    equals the plain mean (aggregation="mean") with less memory.
    """
    from torchmetrics.retrieval import RetrievalHitRate

    out = {}
    directions = {  # queries, gallery, (Q, G) bool target from query/gallery indices
        "i2t": (image, text, lambda q, g: text_to_image[g][None, :] == q[:, None]),
        "t2i": (text, image, lambda q, g: text_to_image[q][:, None] == g[None, :]),
    }
    for name, (queries, gallery, target_of) in directions.items():
        chunk = query_chunk or queries.shape[0]
        gallery_ids = torch.arange(gallery.shape[0])
        for k in ks:
            total = 0.0
            for start in range(0, queries.shape[0], chunk):
                q = torch.arange(start, min(start + chunk, queries.shape[0]))
                preds = queries[q] @ gallery.T  # (c, G)
                target = target_of(q, gallery_ids)  # (c, G)
                indexes = q[:, None].expand_as(preds)  # (c, G)
                metric = RetrievalHitRate(top_k=k)
                metric.update(preds.flatten(), target.flatten(), indexes.flatten())
                total += metric.compute().item() * len(q)
                del preds, target, indexes, metric
            out[f"{name}_R@{k}"] = 100.0 * total / queries.shape[0]
    return out


def hit_count_difference(a: dict[str, float], b: dict[str, float], num_images: int,
                         num_texts: int) -> int:
    """Largest difference, in queries, between two sets of recalls (percentages): 0 when both
    count the same hits (their float32 means may differ in the last digits)."""
    assert a.keys() == b.keys(), (sorted(a), sorted(b))
    queries = {"i2t": num_images, "t2i": num_texts}
    return max(abs(round(a[k] * queries[k[:3]] / 100) - round(b[k] * queries[k[:3]] / 100))
               for k in a)
