"""Torch datasets over caption records: training pairs with negatives, evaluation galleries."""
from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from ..data import ImageRecord

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sample:
    """A record with its resolved image file and integer category ids."""

    record: ImageRecord
    path: Path
    category: int = -1  # id of the record's category (fine class or meta-category), -1: none
    negative_categories: tuple[int, ...] = ()  # one per negative, -1 when unknown


def load_image(path: Path, transform: Callable) -> Tensor:
    """Open an image as RGB and transform it; errors name the file."""
    try:
        with Image.open(path) as img:
            return transform(img.convert("RGB"))
    except Exception as e:  # PIL raises many types for corrupt/unsupported files
        raise RuntimeError(f"{path}: cannot read image ({type(e).__name__}: {e})") from e


class TrainPairs(Dataset):
    """(image, one of its captions, its negatives) for the training losses.

    Items: image (3, H, W), tokens (L,), negative_tokens (K, L), negative_mask (K,),
    negative_categories (K,), category () -- K fixed, records with fewer are padded+masked.
    """

    def __init__(self, samples: Sequence[Sample], transform: Callable, tokenizer: Callable,
                 num_negatives: int) -> None:
        self.samples, self.transform, self.tokenizer = list(samples), transform, tokenizer
        self.num_negatives = num_negatives

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        s = self.samples[i]
        caption = random.choice(s.record.captions)  # seeded per worker by Lightning
        k = self.num_negatives
        negatives = [n.text for n in s.record.negatives[:k]]
        texts = self.tokenizer([caption] + negatives + [""] * (k - len(negatives)))  # (1+K, L)
        neg_cats = list(s.negative_categories[:k]) + [-1] * (k - len(negatives))
        return {
            "image": load_image(s.path, self.transform),
            "tokens": texts[0],
            "negative_tokens": texts[1:],
            "negative_mask": torch.arange(k) < len(negatives),
            "negative_categories": torch.tensor(neg_cats, dtype=torch.long),
            "category": torch.tensor(s.category, dtype=torch.long),
        }


class Gallery(Dataset):
    """One domain's evaluation split: every image with all its captions.

    Items carry global ids (image index, caption index within the gallery) so that the
    Recall@K metric can deduplicate and order shards gathered from several ranks.
    """

    def __init__(self, samples: Sequence[Sample], transform: Callable, tokenizer: Callable,
                 name: str) -> None:
        self.samples, self.transform, self.tokenizer, self.name = (
            list(samples), transform, tokenizer, name)
        counts = [len(s.record.captions) for s in self.samples]
        self.caption_offsets = [0]
        for c in counts[:-1]:
            self.caption_offsets.append(self.caption_offsets[-1] + c)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        s = self.samples[i]
        n = len(s.record.captions)
        return {
            "image": load_image(s.path, self.transform),
            "image_id": torch.tensor(i),
            "tokens": self.tokenizer(list(s.record.captions)),  # (n, L)
            "text_ids": torch.arange(n) + self.caption_offsets[i],
        }


def collate_gallery(items: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """Stack images; concatenate captions with the id of their image."""
    return {
        "image": torch.stack([it["image"] for it in items]),
        "image_ids": torch.stack([it["image_id"] for it in items]),
        "tokens": torch.cat([it["tokens"] for it in items]),
        "text_ids": torch.cat([it["text_ids"] for it in items]),
        "text_image_ids": torch.cat([it["image_id"].expand(len(it["tokens"]))
                                     for it in items]),
    }


def split_validation(records: Sequence[ImageRecord], fraction: float,
                     seed: int) -> tuple[list[ImageRecord], list[ImageRecord]]:
    """Hold out `fraction` of the records (by image, seeded) as a validation split."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {fraction}")
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    n_val = max(1, round(fraction * len(records)))
    held = set(order[:n_val])
    train = [r for i, r in enumerate(records) if i not in held]
    val = [r for i, r in enumerate(records) if i in held]
    return train, val


def check_image(path: Optional[Path], verify: bool) -> Optional[str]:
    """None if the image is usable, else why not."""
    if path is None:
        return "not found under the image root"
    if verify:
        try:
            with Image.open(path) as img:
                img.verify()
        except Exception as e:
            return f"unreadable ({type(e).__name__}: {e})"
    return None
