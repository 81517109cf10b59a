"""Zero-shot classification of a retrieval domain's images by their class names, the sanity
check that the (prompted) CLIP still does what the frozen one did.

Each class is the mean of its L2-normalised template embeddings (CLIP's prompt ensembling):
CLIP's "a photo of a {}." and the domain's own caption prefix (the words its captions put
before the class name, e.g. "This is a photo of {}."). Metrics as CLIP_benchmark names them:
`acc1`, `acc5` and `mean_per_class_recall` (torchmetrics' multiclass accuracy, micro and
macro), in percent.
"""
from __future__ import annotations

from collections import Counter
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader
from torchmetrics.functional.classification import multiclass_accuracy

from ..data.datasets import Gallery, Sample, collate_gallery

CLIP_TEMPLATE = "a photo of a {}."


def caption_prefix(samples: Sequence[Sample]) -> str | None:
    """The domain's own template: the most common text its captions put before their class
    name, followed by "{}."; None when no caption names its class."""
    prefixes = Counter()
    for s in samples:
        name = s.record.class_name
        for caption in s.record.captions:
            if name and name in caption:
                prefixes[caption[:caption.index(name)]] += 1
    if not prefixes:
        return None
    return prefixes.most_common(1)[0][0] + "{}."


def templates_for(samples: Sequence[Sample]) -> list[str]:
    own = caption_prefix(samples)
    return [CLIP_TEMPLATE] + ([own] if own and own != CLIP_TEMPLATE else [])


@torch.no_grad()
def class_embeddings(model: nn.Module, tokenizer: Callable, classes: Sequence[str],
                     templates: Sequence[str]) -> Tensor:
    """(C, D): per class, the renormalised mean of its normalised template embeddings."""
    out = []
    for name in classes:
        features = model.encode_text(tokenizer([t.format(name) for t in templates]),
                                     normalize=True).float()
        out.append(F.normalize(features.mean(0), dim=-1))
    return torch.stack(out)


@torch.no_grad()
def classify(model: nn.Module, samples: Sequence[Sample], transform: Callable,
             tokenizer: Callable, templates: Sequence[str] | None = None,
             batch_size: int = 64) -> dict[str, float]:
    """acc1 / acc5 / mean_per_class_recall (%) of `model` on `samples`' images, over the
    classes of `samples` (sorted by name)."""
    samples = [s for s in samples if s.record.class_name]
    if not samples:
        raise ValueError("classification needs class names: these records have none")
    if any(s.member is not None for s in samples):
        raise ValueError("task=classification reads image files; WebDataset shards are not "
                         "supported here yet")
    classes = sorted({s.record.class_name for s in samples})
    if len(classes) < 2:
        raise ValueError(f"classification needs at least 2 classes, got {classes}")
    templates = list(templates or templates_for(samples))
    was_training = model.training
    model.eval()
    weights = class_embeddings(model, tokenizer, classes, templates)
    loader = DataLoader(Gallery(samples, transform, tokenizer, "classification"),
                        batch_size=batch_size, collate_fn=collate_gallery)
    logits = torch.cat([model.encode_image(b.image, normalize=True).float() @ weights.t()
                        for b in loader])
    model.train(was_training)
    target = torch.tensor([classes.index(s.record.class_name) for s in samples])
    n = len(classes)
    return {
        "acc1": 100 * multiclass_accuracy(logits, target, n, average="micro").item(),
        "acc5": 100 * multiclass_accuracy(logits, target, n, average="micro",
                                          top_k=min(5, n)).item(),
        "mean_per_class_recall": 100 * multiclass_accuracy(logits, target, n,
                                                           average="macro").item(),
        "classes": n, "images": len(samples), "templates": templates,
    }
