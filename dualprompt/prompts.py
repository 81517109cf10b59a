"""The learned prompt vectors. These modules only make embeddings; they never touch CLIP."""
from __future__ import annotations

from typing import Optional

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import MLP_TARGETS


class AttributePrompts(nn.Module):
    """Attribute-level text vectors, one set per prompted layer: shared by every caption, or
    with `classes` > 0 one per class (CoOp's class-specific context)."""

    def __init__(self, length: int, depth: int, width: int, std: float,
                 init: Optional[Tensor] = None, classes: int = 0) -> None:
        super().__init__()
        shape = (classes, depth, length, width) if classes else (depth, length, width)
        vectors = torch.randn(shape) * std  # ([C,] J, k, W)
        if init is not None:  # (n, W) word embeddings for the input layer, n <= k
            vectors[..., 0, :init.shape[0], :] = init
        self.vectors = nn.Parameter(vectors)

    @property
    def class_specific(self) -> bool:
        return self.vectors.dim() == 4

    def forward(self, classes: Optional[Tensor] = None) -> Tensor:
        """Shared: (J, k, W); row 0 goes in at the input, row j replaces it at the input of
        layer j. Class-specific: classes (B,) indices, -1 for none of them (the mean set),
        -> (B, J, k, W); without classes, the mean set (J, k, W)."""
        if not self.class_specific:
            return self.vectors
        mean = self.vectors.mean(0)
        if classes is None:
            return mean
        picked = self.vectors[classes.clamp(min=0)]  # (B, J, k, W)
        return torch.where((classes >= 0)[:, None, None, None], picked, mean.unsqueeze(0))


class FeatureAdapter(nn.Module):
    """CLIP-Adapter: f <- ratio * MLP(f) + (1 - ratio) * f, MLP = D -> D/r -> D with ReLUs."""

    def __init__(self, dim: int, reduction: int, ratio: float) -> None:
        super().__init__()
        self.ratio = ratio
        hidden = max(1, dim // reduction)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden, bias=False), nn.ReLU(inplace=True),
                                 nn.Linear(hidden, dim, bias=False), nn.ReLU(inplace=True))

    def forward(self, features: Tensor) -> Tensor:
        adapted = self.mlp(features.to(self.mlp[0].weight.dtype)).to(features.dtype)
        return self.ratio * adapted + (1.0 - self.ratio) * features


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


class LowRankAttention(nn.Module):
    """CLIP-LoRA's low-rank updates of one tower's attention projections, every layer, and
    optionally of its MLP's two linear layers.

    For each target t and layer l: delta W = alpha / sqrt(r) * B[l] @ A[l], with A (r, in)
    Kaiming-uniform and B (out, r) zero at the start (CLIP-LoRA's init and scaling);
    `dropout` on the input x of each x A^T B^T while training (CLIP-LoRA's, 0.25 there).
    Attention targets (q, k, v, o; W -> W) share `a` (T, L, r, W) and `b` (T, L, W, r); the
    MLP's `mlp_in` (W -> H) and `mlp_out` (H -> W), as LoRA on all linear layers (QLoRA's
    reading: needed to match full fine-tuning), have their own (L, r, in) and (L, out, r).
    The module only makes the deltas; `towers` adds them to the frozen weights for a call.
    """

    def __init__(self, layers: int, width: int, rank: int, alpha: float,
                 targets: list[str], dropout: float = 0.0, mlp_width: int = 0) -> None:
        super().__init__()
        self.targets, self.scaling = list(targets), alpha / math.sqrt(rank)
        self.dropout = dropout  # on each update's input while training (the low-rank path)
        self.layers = layers
        self.attention = [t for t in self.targets if t not in MLP_TARGETS]
        self.mlp = [t for t in self.targets if t in MLP_TARGETS]
        if self.mlp and not mlp_width:
            raise ValueError(f"LoRA on {self.mlp} needs the MLP's hidden width")
        self.a = self.b = None
        if self.attention:
            self.a = nn.Parameter(_kaiming(len(self.attention), layers, rank, width))
            self.b = nn.Parameter(torch.zeros(len(self.attention), layers, width, rank))
        for t in self.mlp:  # (in, out) widths of the MLP's first and second linear layer
            fan_in, fan_out = (width, mlp_width) if t == "mlp_in" else (mlp_width, width)
            setattr(self, f"{t}_a", nn.Parameter(_kaiming(1, layers, rank, fan_in)[0]))
            setattr(self, f"{t}_b", nn.Parameter(torch.zeros(layers, fan_out, rank)))

    def forward(self) -> list[dict[str, Tensor]]:
        """Per layer, {target: delta (out, in)}."""
        stacked = {}  # target -> (L, out, in)
        if self.attention:
            deltas = self.scaling * (self.b @ self.a)  # (T, L, W, W)
            stacked.update({t: deltas[i] for i, t in enumerate(self.attention)})
        for t in self.mlp:
            stacked[t] = self.scaling * (getattr(self, f"{t}_b") @ getattr(self, f"{t}_a"))
        return [{t: d[layer] for t, d in stacked.items()} for layer in range(self.layers)]

    def factors(self) -> list[dict[str, tuple[Tensor, Tensor]]]:
        """Per layer, {target: (A (r, in), scaling * B (out, r))}: the delta is their product."""
        pairs = {}
        if self.attention:
            b = self.scaling * self.b
            pairs.update({t: (self.a[i], b[i]) for i, t in enumerate(self.attention)})
        for t in self.mlp:
            pairs[t] = (getattr(self, f"{t}_a"), self.scaling * getattr(self, f"{t}_b"))
        return [{t: (a[layer], b[layer]) for t, (a, b) in pairs.items()}
                for layer in range(self.layers)]


class TokenLoRA(nn.Module):
    """LoRA on the text tower's token embedding: e(t) <- E[t] + alpha / rank * a[t] @ b.

    The frozen CLIP never learned the words of a fine-grained domain's subcategory names (a
    new car model, a bird species): full fine-tuning re-learns their embeddings, which no
    prompt or attention LoRA reaches. Initialised as LoRA's embedding layers are (Hu et al.
    2021, loralib; peft's `lora_embedding_A` / `_B`): `a` (vocab, r) zero, `b` (r, W) standard
    normal, scaling alpha / r. A token's row of `a` only gets a gradient from captions that
    contain it, so the embedding of a word never seen in training stays the frozen one.
    """

    def __init__(self, vocab: int, width: int, rank: int, alpha: float) -> None:
        super().__init__()
        self.scaling = alpha / rank
        self.a = nn.Parameter(torch.zeros(vocab, rank))
        self.b = nn.Parameter(torch.randn(rank, width))

    def forward(self, tokens: Tensor) -> Tensor:
        """(B, L) token ids -> (B, L, W) additive deltas of their embeddings."""
        return F.embedding(tokens, self.a) @ (self.scaling * self.b)


def _kaiming(targets: int, layers: int, rank: int, fan_in: int) -> Tensor:
    a = torch.empty(targets, layers, rank, fan_in)
    for block in a.view(-1, rank, fan_in):
        nn.init.kaiming_uniform_(block, a=math.sqrt(5))  # as nn.Linear's weight
    return a
