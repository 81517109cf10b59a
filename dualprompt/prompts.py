"""The learned prompt vectors. These modules only make embeddings; they never touch CLIP."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class AttributePrompts(nn.Module):
    """Attribute-level text vectors shared by every caption, one set per prompted layer."""

    def __init__(self, length: int, depth: int, width: int, std: float,
                 init: Optional[Tensor] = None) -> None:
        super().__init__()
        vectors = torch.randn(depth, length, width) * std  # (J, k, W)
        if init is not None:  # (n, W) word embeddings for the input layer, n <= k
            vectors[0, :init.shape[0]] = init
        self.vectors = nn.Parameter(vectors)

    def forward(self) -> Tensor:
        """(J, k, W): row 0 goes in at the input, row j replaces it at the input of layer j."""
        return self.vectors


class SubcategoryPrompts(nn.Module):
    """Subcategory-sensitive text vectors chosen from the input, not from a label.

    A pool of P prompt sets with learnable keys; each caption mixes the sets by the softmax of
    cosine(query, key) / temperature, where the query is a frozen description of the caption.
    """

    def __init__(self, length: int, pool_size: int, width: int, key_dim: int,
                 temperature: float, std: float) -> None:
        super().__init__()
        self.temperature = temperature
        self.vectors = nn.Parameter(torch.randn(pool_size, length, width) * std)  # (P, m, W)
        self.keys = nn.Parameter(torch.randn(pool_size, key_dim))  # (P, Dq)

    def mixing_weights(self, query: Tensor) -> Tensor:
        """query: (B, Dq) -> (B, P) weights summing to 1."""
        sim = F.normalize(query.float(), dim=-1) @ F.normalize(self.keys, dim=-1).t()  # (B, P)
        return torch.softmax(sim / self.temperature, dim=-1)

    def forward(self, query: Tensor) -> Tensor:
        """query: (B, Dq) -> (B, m, W) prompt vectors."""
        return torch.einsum("bp,pmw->bmw", self.mixing_weights(query), self.vectors)


class VisualPrompts(nn.Module):
    """Visual prompt tokens per prompted image layer: independent, or generated from the
    attribute text vectors by one linear map per layer (MaPLe coupling)."""

    def __init__(self, length: int, depth: int, width: int, std: float,
                 coupled_from_width: Optional[int] = None) -> None:
        super().__init__()
        self.depth = depth
        if coupled_from_width is None:
            self.vectors = nn.Parameter(torch.randn(depth, length, width) * std)  # (J, v, Wv)
            self.coupling = None
        else:
            self.register_parameter("vectors", None)
            self.coupling = nn.ModuleList(
                nn.Linear(coupled_from_width, width) for _ in range(depth))

    def forward(self, text_vectors: Optional[Tensor] = None) -> list[Tensor]:
        """Returns `depth` tensors of shape (v, Wv); coupled needs text_vectors (J, k, W)."""
        if self.coupling is None:
            return list(self.vectors.unbind(0))
        if text_vectors is None:
            raise ValueError("coupled visual prompts need the attribute text vectors")
        return [proj(text_vectors[j]) for j, proj in enumerate(self.coupling)]
