"""Attribute extraction with a (prompted) CLIP: for each attribute of an image (colour, shade,
pattern, shape...), the value whose prompt is closest to the image, scored by accuracy and
macro-F1 per attribute (torchmetrics), the measure retail teams use for multimodal LLMs.

Ground truth: a JSON file per domain, {image id: {attribute: value}} (the world writes
`attributes.json`; `dataset.domains.<d>.attributes`). Prompts: `dataset.attribute_templates`
({attribute: "... {} ..."}), else "a photo of something {}.".
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from torchmetrics.functional.classification import multiclass_accuracy, multiclass_f1_score

from ..data.datasets import Gallery, Sample, collate_gallery

DEFAULT_TEMPLATE = "a photo of something {}."
NOT_ATTRIBUTES = {"split", "class_name", "meta"}


def load_attributes(path: Path, samples: Sequence[Sample]) -> list[dict[str, str]]:
    """Each sample's attributes from `path`, in order; a sample without any is an error
    naming the file and the record."""
    try:
        table = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: cannot read the attribute file ({e})") from e
    out = []
    for s in samples:
        row = table.get(s.record.image_id)
        if not isinstance(row, dict):
            raise ValueError(f"{path}: no attributes for record {s.record.image_id!r}")
        out.append({k: str(v) for k, v in row.items() if k not in NOT_ATTRIBUTES})
    return out


@torch.no_grad()
def extract_attributes(model: nn.Module, samples: Sequence[Sample],
                       truth: Sequence[Mapping[str, str]], transform: Callable,
                       tokenizer: Callable, templates: Mapping[str, str] | None = None,
                       batch_size: int = 64) -> dict:
    """Per attribute: accuracy and macro-F1 (%) over the values seen in `truth`, and the
    overall mean of each; `ms_per_image`: this model's image encoding and scoring time (wall
    clock on the CPU; on a GPU it would need a synchronize)."""
    if any(s.member is not None for s in samples):
        raise ValueError("task=attributes reads image files; WebDataset shards are not "
                         "supported here yet")
    templates = dict(templates or {})
    names = sorted({k for row in truth for k in row})
    values = {a: sorted({row[a] for row in truth if a in row}) for a in names}
    was_training = model.training
    model.eval()
    prompts = {a: F.normalize(model.encode_text(tokenizer(
        [templates.get(a, DEFAULT_TEMPLATE).format(v) for v in values[a]]), normalize=True)
        .float(), dim=-1) for a in names}
    loader = DataLoader(Gallery(samples, transform, tokenizer, "attributes"),
                        batch_size=batch_size, collate_fn=collate_gallery)
    start = time.perf_counter()
    images, encode_seconds = [], 0.0
    for batch in loader:
        t = time.perf_counter()
        images.append(model.encode_image(batch.image, normalize=True).float())
        encode_seconds += time.perf_counter() - t
    features = torch.cat(images)
    t = time.perf_counter()
    predictions = {a: (features @ prompts[a].t()).argmax(1) for a in names}
    encode_seconds += time.perf_counter() - t
    model.train(was_training)
    per_attribute = {}
    for a in names:
        rows = [i for i, row in enumerate(truth) if a in row]
        target = torch.tensor([values[a].index(truth[i][a]) for i in rows])
        predicted, n = predictions[a][rows], len(values[a])
        if n < 2:
            continue  # one value: nothing to choose
        per_attribute[a] = {
            "accuracy": 100 * multiclass_accuracy(predicted, target, n, average="micro").item(),
            "macro_f1": 100 * multiclass_f1_score(predicted, target, n, average="macro").item(),
            "values": n, "template": templates.get(a, DEFAULT_TEMPLATE)}
    overall = {k: sum(p[k] for p in per_attribute.values()) / max(1, len(per_attribute))
               for k in ("accuracy", "macro_f1")}
    return {"attributes": per_attribute, "overall": overall, "images": len(samples),
            "ms_per_image": 1000 * encode_seconds / max(1, len(samples)),
            "seconds": round(time.perf_counter() - start, 2)}
