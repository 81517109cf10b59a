"""Torch datasets over caption records: training pairs with negatives, evaluation galleries."""
from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence, Union

import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset, Sampler, default_collate

from .records import ImageRecord

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sample:
    """A record with its resolved image file and integer category ids."""

    record: ImageRecord
    path: Union[Path, str]  # a file, or a shard (a str when it is a URL)
    category: int = -1  # id of the record's category (fine class or meta-category), -1: none
    negative_categories: tuple[int, ...] = ()  # one per negative, -1 when unknown
    member: Optional[str] = None  # the sample's key in a WebDataset shard (`path`): shards.py

    @property
    def location(self) -> str:
        """Where the image is: its file, or `<shard>#<key>`."""
        return str(self.path) if self.member is None else f"{self.path}#{self.member}"


@dataclass
class TrainBatch:
    """A batch of training pairs: B images, each with its positive and K negative captions."""

    image: Tensor  # (B, 3, H, W)
    tokens: Tensor  # (B, L) the positive caption of each image
    negative_tokens: Tensor  # (B, K, L)
    negative_mask: Tensor  # (B, K) bool; False for padding (a record with fewer than K)
    negative_categories: Tensor  # (B, K) category id of each negative, -1 when unknown
    category: Tensor  # (B,) category id of each image, -1 when none
    index: Optional[Tensor] = None  # (B,) the dataset index of each image
    caption: Optional[Tensor] = None  # (B,) which of the image's captions is the positive


@dataclass
class GalleryBatch:
    """A batch of an evaluation gallery: B images and all M of their captions, with global ids."""

    image: Tensor  # (B, 3, H, W)
    image_ids: Tensor  # (B,)
    tokens: Tensor  # (M, L)
    text_ids: Tensor  # (M,)
    text_image_ids: Tensor  # (M,) the image id of each caption


class ImageError(RuntimeError):
    """An image file that cannot be read; the message names the file (and the record)."""


def load_image(path: Path, transform: Callable) -> Tensor:
    """Open an image as RGB and transform it; errors name the file."""
    try:
        with open_image(path) as img:
            return transform(to_rgb(img))
    except Exception as e:  # PIL raises many types for corrupt/unsupported files
        raise ImageError(f"{path}: cannot read image ({type(e).__name__}: {e})") from e


def open_image(path: Path) -> Image.Image:
    """`Image.open`, refusing images over PIL's decompression-bomb limit (PIL itself only warns
    up to twice the limit): a tiny file can decode to gigabytes. Raise the limit,
    `PIL.Image.MAX_IMAGE_PIXELS`, for genuinely huge images."""
    img = Image.open(path)
    limit = Image.MAX_IMAGE_PIXELS
    if limit and img.width * img.height > limit:
        img.close()
        raise ValueError(f"{img.width}x{img.height} pixels is over PIL.Image.MAX_IMAGE_PIXELS="
                         f"{limit} (a decompression bomb?); downscale the image")
    return img


def to_rgb(img: Image.Image) -> Image.Image:
    """Any mode as RGB. 16-bit grey (I;16*, or I with values over 255) is scaled to 8 bits
    first: `convert("RGB")` would clip it, turning most such images white."""
    if img.mode.startswith("I;16") or (img.mode == "I" and img.getextrema()[1] > 255):
        img = img.convert("I").point(lambda v: v * (1 / 256)).convert("L")
    return img.convert("RGB")


def load_sample_image(sample: Sample, transform: Callable) -> Tensor:
    """`load_image` whose error names the record too, and the option that checks every
    image when the data is set up (so that a bad file is skipped instead)."""
    try:
        return load_image(sample.path, transform)
    except ImageError as e:
        r = sample.record
        where = f"record {r.image_id!r}" + (f" of domain {r.domain}" if r.domain else "")
        raise ImageError(f"{where}: {e}. Set "
                         "dataset.skip_bad_images=true to decode every image at setup and "
                         "skip (count, log) the unreadable ones") from e


class EpochShuffle(Sampler[tuple[int, int]]):
    """Each epoch a new order of range(n) that depends on (seed, epoch) only.

    torch's RandomSampler draws from the RNG of the process, which a run resumed from a
    checkpoint does not have: it would see other batches than the uninterrupted run. Yields
    (index, epoch) keys, so that `TrainPairs` can draw the caption from them too (a worker's
    copy of the dataset never hears of `set_epoch`). Lightning calls `set_epoch` before every
    epoch; under DDP it wraps this sampler in a DistributedSamplerWrapper, which forwards it
    and deals the order out to the ranks in turn (it does not reshuffle a custom sampler).

    resume: (epoch, items) from a mid-epoch checkpoint: that epoch starts `items` further on
    (the skipped items move to the end, so the length, which DDP relies on, stays n).
    """

    def __init__(self, n: int, seed: int, resume: Optional[tuple[int, int]] = None) -> None:
        self.n, self.seed, self.epoch, self.resume = n, seed, 0, resume

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = list(range(self.n))
        random.Random(f"{self.seed}:{self.epoch}").shuffle(order)
        if self.resume is not None and self.resume[0] == self.epoch and self.n:
            skip = self.resume[1] % self.n
            order = order[skip:] + order[:skip]
            log.info("epoch %d resumes after the %d items it had trained on", self.epoch, skip)
        return iter([(i, self.epoch) for i in order])


class TrainPairs(Dataset):
    """(image, one of its captions, its negatives) for the training losses.

    Items: image (3, H, W), tokens (L,), negative_tokens (K, L), negative_mask (K,),
    negative_categories (K,), category () -- K fixed, records with fewer are padded+masked.
    Keys are an index or an (index, epoch) pair (see `EpochShuffle`); the caption of an image
    with several is drawn from (seed, epoch, index), so a resumed run draws the same ones.
    """

    def __init__(self, samples: Sequence[Sample], transform: Callable, tokenizer: Callable,
                 num_negatives: int, seed: int = 0) -> None:
        self.samples, self.transform, self.tokenizer = list(samples), transform, tokenizer
        self.num_negatives, self.seed = num_negatives, seed

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: Union[int, tuple[int, int]]) -> dict[str, Tensor]:
        i, epoch = key if isinstance(key, tuple) else (key, 0)
        return self.item(i, epoch, load_sample_image(self.samples[i], self.transform))

    def item(self, i: int, epoch: int, image: Tensor) -> dict[str, Tensor]:
        """Sample i's item around its transformed image (read from a file or a shard)."""
        s = self.samples[i]
        captions = s.record.captions
        which = (random.Random(f"{self.seed}:{epoch}:{i}").randrange(len(captions))
                 if len(captions) > 1 else 0)
        caption = captions[which]
        k = self.num_negatives
        negatives = [n.text for n in s.record.negatives[:k]]
        texts = self.tokenizer([caption] + negatives + [""] * (k - len(negatives)))  # (1+K, L)
        neg_cats = list(s.negative_categories[:k]) + [-1] * (k - len(negatives))
        return {
            "image": image,
            "tokens": texts[0],
            "negative_tokens": texts[1:],
            "negative_mask": torch.arange(k) < len(negatives),
            "negative_categories": torch.tensor(neg_cats, dtype=torch.long),
            "category": torch.tensor(s.category, dtype=torch.long),
            "index": torch.tensor(i, dtype=torch.long),
            "caption": torch.tensor(which, dtype=torch.long),
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
        return self.item(i, load_sample_image(self.samples[i], self.transform))

    def item(self, i: int, image: Tensor) -> dict[str, Tensor]:
        """Sample i's item around its transformed image (read from a file or a shard)."""
        s = self.samples[i]
        n = len(s.record.captions)
        return {
            "image": image,
            "image_id": torch.tensor(i),
            "tokens": self.tokenizer(list(s.record.captions)),  # (n, L)
            "text_ids": torch.arange(n) + self.caption_offsets[i],
        }


def collate_pairs(items: list[dict[str, Tensor]]) -> TrainBatch:
    """Stack `TrainPairs` items into a `TrainBatch`."""
    return TrainBatch(**default_collate(items))


def collate_gallery(items: list[dict[str, Tensor]]) -> GalleryBatch:
    """Stack images; concatenate captions with the id of their image."""
    return GalleryBatch(
        image=torch.stack([it["image"] for it in items]),
        image_ids=torch.stack([it["image_id"] for it in items]),
        tokens=torch.cat([it["tokens"] for it in items]),
        text_ids=torch.cat([it["text_ids"] for it in items]),
        text_image_ids=torch.cat([it["image_id"].expand(len(it["tokens"])) for it in items]),
    )


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


def few_shot(records: Sequence[ImageRecord], shots: int, seed: int,
             where: str = "") -> list[ImageRecord]:
    """`shots` records of each class, drawn with `seed` only (so every method gets the same
    images at a seed), in their original order; a class with fewer keeps all and is logged.
    Raises ValueError when the records have no classes."""
    by_class: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        if not r.class_name:
            raise ValueError(f"{where}: few-shot (dataset.shots={shots}) needs a class per "
                             f"record; {r.image_id!r} has none (dataset.class_key)")
        by_class.setdefault(r.class_name, []).append(i)
    keep, short = [], []
    for name in sorted(by_class):
        rows = by_class[name]
        if len(rows) < shots:
            short.append(f"{name} ({len(rows)})")
        keep += random.Random(f"{seed}:{name}").sample(rows, min(shots, len(rows)))
    if short:
        log.warning("%s: %d classes have fewer than %d training images, all kept: %s", where,
                    len(short), shots, ", ".join(short[:5]))
    return [records[i] for i in sorted(keep)]


def check_image(path: Optional[Path], verify: bool) -> Optional[str]:
    """None if the image is usable, else why not. Without `verify` only that the file exists
    and is not empty (a stat); with it, the whole image is decoded: `verify()` alone misses
    truncated JPEGs. JPEGs decode at 1/8 scale, which still reads every byte: about 1 ms for
    a 500x375 JPEG on one core (benchmarks/reliability/report.md)."""
    if path is None:
        return "not found under the image root"
    try:
        if path.stat().st_size == 0:
            return "empty file (0 bytes)"
        if verify:
            with open_image(path) as img:
                img.verify()  # checksums (PNG chunks), structure
            with open_image(path) as img:  # verify() leaves the image unusable: reopen
                img.draft("RGB", (max(1, img.width // 8), max(1, img.height // 8)))
                img.load()  # truncated or corrupt data fails here
    except Exception as e:
        return f"unreadable ({type(e).__name__}: {e})"
    return None
