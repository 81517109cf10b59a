"""Diagnostics of a world CLIP: linear probes on frozen features and zero-shot retrieval.

Probes answer "does the frozen image tower carry the attribute?": a logistic regression on
frozen `encode_image` features, trained on one set of images and scored on another, against
the majority-class rate (chance). Zero-shot retrieval scores one positive caption per image
against the whole split (`dualprompt.metrics`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..metrics import retrieval_metrics
from .corpus import PretrainStream
from .pixels import images_to_tensor

log = logging.getLogger(__name__)

PROBED = ("shape", "color", "shade", "pattern", "size", "position", "background")


@torch.no_grad()
def image_features(model: torch.nn.Module, images: np.ndarray, batch_size: int = 256) -> torch.Tensor:
    """Frozen, L2-normalised image features: uint8 (N, H, W, 3) -> (N, D)."""
    chunks = [model.encode_image(images_to_tensor(images[i:i + batch_size])) for i in range(0, len(images), batch_size)]
    return F.normalize(torch.cat(chunks), dim=-1)


@torch.no_grad()
def text_features(model: torch.nn.Module, tokenizer, captions: list[str], batch_size: int = 256) -> torch.Tensor:
    """Frozen, L2-normalised text features: N captions -> (N, D)."""
    chunks = [model.encode_text(tokenizer(captions[i:i + batch_size])) for i in range(0, len(captions), batch_size)]
    return F.normalize(torch.cat(chunks), dim=-1)


def linear_probe(train_x: torch.Tensor, train_y: np.ndarray, test_x: torch.Tensor, test_y: np.ndarray,
                 steps: int = 300, lr: float = 0.05, weight_decay: float = 1e-4) -> float:
    """Accuracy on the test set of a multinomial logistic regression fit on the train set.

    train_x (N, D), test_x (M, D) features; labels are any hashable values.
    """
    classes = sorted(set(train_y.tolist()) | set(test_y.tolist()))
    index = {c: i for i, c in enumerate(classes)}
    ytr = torch.tensor([index[c] for c in train_y.tolist()])
    yte = torch.tensor([index[c] for c in test_y.tolist()])
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    xtr, xte = (train_x - mean) / std, (test_x - mean) / std
    generator = torch.Generator().manual_seed(0)
    layer = torch.nn.Linear(xtr.shape[1], len(classes))
    with torch.no_grad():
        layer.weight.normal_(0, 0.01, generator=generator)
        layer.bias.zero_()
    optimizer = torch.optim.Adam(layer.parameters(), lr=lr, weight_decay=weight_decay)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: extra threads only wait on each other
    try:
        with torch.enable_grad():
            for _ in range(steps):
                loss = F.cross_entropy(layer(xtr), ytr)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        with torch.no_grad():
            return float((layer(xte).argmax(1) == yte).float().mean())
    finally:
        torch.set_num_threads(threads)


def _chance(train_y: np.ndarray, test_y: np.ndarray) -> float:
    """Majority-class rate: the accuracy of always answering the commonest train label."""
    values, counts = np.unique(train_y, return_counts=True)
    return float((test_y == values[counts.argmax()]).mean())


def probe_attributes(train_x, train_attrs: list[dict], test_x, test_attrs: list[dict], names) -> dict:
    """Probe each named attribute; returns {name: {"accuracy", "chance"}}."""
    out = {}
    for name in names:
        ytr = np.array([a[name] for a in train_attrs])
        yte = np.array([a[name] for a in test_attrs])
        out[name] = {"accuracy": round(linear_probe(train_x, ytr, test_x, yte), 4),
                     "chance": round(_chance(ytr, yte), 4)}
    return out


def probe_pretrain_attributes(model: torch.nn.Module, seed: int, n: int, image_size: int) -> dict:
    """Probes on held-out pretraining-distribution images (70% fit, 30% scored)."""
    images, _, objects = PretrainStream(seed, image_size).batch(n)
    features = image_features(model, images)
    attrs = [o.as_dict() for o in objects]
    cut = int(0.7 * n)
    return probe_attributes(features[:cut], attrs[:cut], features[cut:], attrs[cut:], PROBED)


def load_split(domain_dir: Path, split: str) -> tuple[list[str], np.ndarray, list[str]]:
    """(ids, images uint8 (N, H, W, 3), positive captions) of one FDRD split written by the world."""
    records = json.loads((domain_dir / f"{split}.json").read_text())
    ids = sorted(records)
    images = np.stack([np.asarray(Image.open(domain_dir / records[k]["file_path"]).convert("RGB")) for k in ids])
    return ids, images, [records[k]["positive"] for k in ids]


def recall_at_1(image_feats: torch.Tensor, text_feats: torch.Tensor, captions: list[str]) -> dict[str, float]:
    """R@1 both ways with one caption per image, as `dualprompt.metrics` counts it (one ground
    truth per query, ties by index)."""
    n = len(captions)
    r1 = retrieval_metrics(image_feats, text_feats, torch.arange(n), ks=(1,))
    return {"image_to_text_r1": r1["i2t_R@1"] / 100, "text_to_image_r1": r1["t2i_R@1"] / 100,
            "chance": 1.0 / n}


def diagnose_domain(model: torch.nn.Module, tokenizer, domain_dir: str | Path, split: str = "val") -> dict:
    """Fine-class/attribute probes (fit on train, scored on `split`) and zero-shot R@1 on `split`."""
    domain_dir = Path(domain_dir)
    attributes = json.loads((domain_dir / "attributes.json").read_text())
    tr_ids, tr_images, _ = load_split(domain_dir, "train")
    ev_ids, ev_images, captions = load_split(domain_dir, split)
    tr_x, ev_x = image_features(model, tr_images), image_features(model, ev_images)
    names = ("class_name", "meta", "shape", "color", "shade", "pattern", "size", "position", "background")
    probes = probe_attributes(tr_x, [attributes[k] for k in tr_ids], ev_x, [attributes[k] for k in ev_ids], names)
    zero_shot = recall_at_1(ev_x, text_features(model, tokenizer, captions), captions)
    return {"probes": probes, "zero_shot": zero_shot, "split": split, "images": len(ev_ids)}


def diagnose(model_dir: str | Path, world_root: str | Path, split: str = "val") -> dict:
    """Load the CLIP in `model_dir` with open_clip's own loader and diagnose every domain."""
    import open_clip

    model, _, _ = open_clip.create_model_and_transforms(f"local-dir:{model_dir}")
    model.eval()
    tokenizer = open_clip.get_tokenizer(f"local-dir:{model_dir}")
    report = {}
    for domain_dir in sorted(p for p in Path(world_root).iterdir() if (p / "classes.json").is_file()):
        report[domain_dir.name] = diagnose_domain(model, tokenizer, domain_dir, split)
        zero_shot, fine = report[domain_dir.name]["zero_shot"], report[domain_dir.name]["probes"]["class_name"]
        log.info("%s: zero-shot R@1 i2t %.3f t2i %.3f; fine-class probe %.3f (chance %.3f)", domain_dir.name,
                 zero_shot["image_to_text_r1"], zero_shot["text_to_image_r1"], fine["accuracy"], fine["chance"])
    return report
