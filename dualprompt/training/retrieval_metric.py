"""torchmetrics wrapper around `dualprompt.metrics.retrieval_metrics` for DDP evaluation."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
import torchmetrics
from torch import Tensor
from torchmetrics.utilities import dim_zero_cat

from dualprompt.metrics import DEFAULT_KS, retrieval_metrics

_STATES = ("image_features", "image_ids", "text_features", "text_ids", "text_image_ids")


def _dedup(ids: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """ids (L,) -> sorted unique ids (U,), position of each one's first occurrence (U,), and the
    inverse map (L,) from every entry to its unique id."""
    unique_ids, inverse = torch.unique(ids, return_inverse=True)
    positions = torch.arange(ids.numel(), device=ids.device)
    first = torch.full_like(unique_ids, ids.numel()).scatter_reduce(0, inverse, positions, "amin")
    return unique_ids, first, inverse


class RetrievalRecall(torchmetrics.Metric):
    """Image<->text Recall@K over a whole gallery accumulated across batches and DDP ranks.

    Each update brings image embeddings with their GLOBAL image ids, and caption embeddings with
    their global caption ids and the global id of their image. Items may arrive in any order, be
    split across updates or ranks, and repeat (e.g. DistributedSampler padding). `compute` keeps
    one copy per id (the first after gathering: duplicates are assumed identical), orders images
    and captions by id so the result does not depend on gather order, L2-normalises, and returns
    `dualprompt.metrics.retrieval_metrics`: percentages for ``{i2t,t2i}_R@k`` plus ``rsum``.
    Ties are broken by id, ascending (see `dualprompt.metrics.retrieval_ranks`).
    """

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    def __init__(self, ks: Sequence[int] = DEFAULT_KS, chunk_size: int = 1024, **kwargs: Any):
        super().__init__(**kwargs)
        self.ks = tuple(ks)
        self.chunk_size = chunk_size
        for name in _STATES:
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(
        self,
        image_features: Tensor,
        image_ids: Tensor,
        text_features: Tensor,
        text_ids: Tensor,
        text_image_ids: Tensor,
    ) -> None:
        """Store a batch.

        Args:
            image_features: (n, D) image embeddings.
            image_ids: (n,) global image ids.
            text_features: (m, D) caption embeddings.
            text_ids: (m,) global caption ids.
            text_image_ids: (m,) global id of each caption's image.
        """
        n, m = image_features.shape[0], text_features.shape[0]
        if image_features.ndim != 2 or image_ids.shape != (n,):
            raise ValueError(
                f"image features {tuple(image_features.shape)}, ids {tuple(image_ids.shape)}"
            )
        if text_features.ndim != 2 or text_ids.shape != (m,) or text_image_ids.shape != (m,):
            raise ValueError(
                f"text features {tuple(text_features.shape)}, ids {tuple(text_ids.shape)}, "
                f"image ids {tuple(text_image_ids.shape)}"
            )
        self.image_features.append(image_features.detach())
        self.image_ids.append(image_ids.detach().long())
        self.text_features.append(text_features.detach())
        self.text_ids.append(text_ids.detach().long())
        self.text_image_ids.append(text_image_ids.detach().long())

    def compute(self) -> dict[str, float]:
        # list states after local updates, single tensors after a DDP sync: dim_zero_cat takes both
        image_ids, image_first, _ = _dedup(dim_zero_cat(self.image_ids))  # (N,)
        image_features = dim_zero_cat(self.image_features)[image_first]  # (N, D)
        all_text_image_ids = dim_zero_cat(self.text_image_ids)  # (L,) with duplicates
        _, text_first, text_inverse = _dedup(dim_zero_cat(self.text_ids))  # (M,), (M,), (L,)
        text_features = dim_zero_cat(self.text_features)[text_first]  # (M, D)
        text_image_ids = all_text_image_ids[text_first]  # (M,)
        if (text_image_ids[text_inverse] != all_text_image_ids).any():
            raise ValueError("a caption id is paired with different image ids across updates")

        text_to_image = torch.searchsorted(image_ids, text_image_ids)  # (M,)
        text_to_image = text_to_image.clamp_max(image_ids.numel() - 1)
        unknown = image_ids[text_to_image] != text_image_ids
        if unknown.any():
            raise ValueError(f"{int(unknown.sum())} captions refer to image ids never updated")

        return retrieval_metrics(
            F.normalize(image_features.float(), dim=-1),
            F.normalize(text_features.float(), dim=-1),
            text_to_image,
            ks=self.ks,
            chunk_size=self.chunk_size,
        )
