"""What `python -m dualprompt.embed` embeds: a folder of images, a caption file (FDRD or
Karpathy) or a text file, read into ids and paths, and the torch datasets over them."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..config import StrEnum
from .datasets import load_image
from .fdrd import load_fdrd_json
from .images import IMAGE_SUFFIXES, ImageIndex
from .karpathy import load_karpathy_json
from .records import read_json_file

log = logging.getLogger(__name__)


class Modality(StrEnum):
    """What to embed."""

    image = "image"
    text = "text"


KINDS = tuple(Modality)


class InputFormat(StrEnum):
    auto = "auto"  # a folder: images; .json: karpathy if it has "images", else fdrd; else text
    images = "images"  # a folder of images, searched recursively
    fdrd = "fdrd"  # an FDRD caption file
    karpathy = "karpathy"  # a Karpathy caption file (dataset_coco.json, dataset_flickr30k.json)
    text = "text"  # a text file, one caption per line (blank lines skipped)
    # upper-case aliases, the Python spelling
    AUTO, IMAGES, FDRD, KARPATHY, TEXT = "auto", "images", "fdrd", "karpathy", "text"


@dataclass
class EmbedInputs:
    """Images and captions to embed, with the ids written next to their embeddings."""

    format: InputFormat
    image_paths: list[Path] = field(default_factory=list)
    image_ids: list[str] = field(default_factory=list)
    captions: list[str] = field(default_factory=list)
    text_ids: list[str] = field(default_factory=list)
    text_image_ids: Optional[list[str]] = None  # caption files: the image id of each caption
    skipped_images: int = 0


def detect_format(path: Path) -> InputFormat:
    if path.is_dir():
        return InputFormat.IMAGES
    if path.suffix.lower() == ".json":
        data = read_json_file(path)
        karpathy = isinstance(data, dict) and isinstance(data.get("images"), list)
        return InputFormat.KARPATHY if karpathy else InputFormat.FDRD
    return InputFormat.TEXT


def read_inputs(path: str, fmt: str = "auto", *, image_root: Optional[str] = None,
                split: Optional[str] = None, skip_missing_images: bool = False) -> EmbedInputs:
    """Read a folder of images, a caption JSON (FDRD or Karpathy) or a captions text file.

    Caption files: images are found under `image_root` (default: the file's folder) with
    `ImageIndex`; `split` picks a Karpathy split (None: train + restval, val and test)."""
    source = Path(path).expanduser()
    if not source.exists():
        raise FileNotFoundError(f"input not found: {source}")
    try:
        fmt = InputFormat(fmt)
    except ValueError:
        raise ValueError(f"format must be one of {[f.value for f in InputFormat]}, "
                         f"got {fmt!r}") from None
    fmt = detect_format(source) if fmt == InputFormat.AUTO else fmt
    if fmt == InputFormat.IMAGES:
        if not source.is_dir():
            raise ValueError(f"format=images needs a folder, got {source}")
        paths = sorted(p for p in source.rglob("*")
                       if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not paths:
            raise ValueError(f"{source}: no image files ({', '.join(IMAGE_SUFFIXES)})")
        ids = [p.relative_to(source).as_posix() for p in paths]
        return EmbedInputs(fmt, paths, _check_ids(ids, "image"))
    if fmt == InputFormat.TEXT:
        lines = source.read_text(encoding="utf-8-sig").splitlines()
        numbered = [(str(n), line.strip()) for n, line in enumerate(lines, 1) if line.strip()]
        if not numbered:
            raise ValueError(f"{source}: no captions (one per line expected)")
        return EmbedInputs(fmt, text_ids=[n for n, _ in numbered],
                           captions=[c for _, c in numbered])
    return _caption_file(source, fmt, image_root, split, skip_missing_images)


def _caption_file(path: Path, fmt: InputFormat, image_root: Optional[str], split: Optional[str],
                  skip_missing: bool) -> EmbedInputs:
    if fmt == InputFormat.FDRD:
        records, _ = load_fdrd_json(path)
    else:
        splits = [split] if split else ["train", "val", "test"]  # "train" includes restval
        records = [r for s in splits for r in load_karpathy_json(path, s)]
    if not records:
        raise ValueError(f"{path}: no records" + (f" in split {split!r}" if split else ""))
    index = ImageIndex(Path(image_root).expanduser() if image_root else path.parent)
    inputs, missing = EmbedInputs(fmt, text_image_ids=[]), []
    for r in records:
        image = index.resolve(r.file_name)
        if image is None:
            missing.append(r)
            continue
        inputs.image_paths.append(image)
        inputs.image_ids.append(r.image_id)
        for j, caption in enumerate(r.captions):
            inputs.captions.append(caption)
            inputs.text_ids.append(f"{r.image_id}#{j}")
            inputs.text_image_ids.append(r.image_id)
    if missing and not skip_missing:
        shown = ", ".join(f"{r.image_id!r} ({r.file_name})" for r in missing[:5])
        raise FileNotFoundError(f"{path}: {len(missing)} of {len(records)} images not found "
                                f"under {index.root}: {shown}. Set image_root=<folder>, or "
                                "skip_missing_images=true to leave them (and their captions) out.")
    if missing:
        log.warning("%s: skipped %d images not found under %s", path, len(missing), index.root)
    if not inputs.image_ids:
        raise ValueError(f"{path}: none of the {len(records)} images found under {index.root}")
    inputs.skipped_images = len(missing)
    _check_ids(inputs.image_ids, "image")
    return inputs


def _check_ids(ids: list[str], kind: str) -> list[str]:
    """Ids are written one per line: they must be unique and single-line."""
    if len(set(ids)) != len(ids):
        raise ValueError(f"{len(ids) - len(set(ids))} duplicate {kind} ids")
    bad = [i for i in ids if "\n" in i or "\r" in i]
    if bad:
        raise ValueError(f"{kind} ids must not contain line breaks, got {bad[0]!r}")
    return ids


class ImageFiles(Dataset):
    """Items: {"index": (), "image": (3, H, W)}."""

    def __init__(self, paths: Sequence[Path], transform: Callable) -> None:
        self.paths, self.transform = list(paths), transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {"index": torch.tensor(i), "image": load_image(self.paths[i], self.transform)}


class Captions(Dataset):
    """Items: {"index": (), "tokens": (L,)}."""

    def __init__(self, captions: Sequence[str], tokenizer: Callable) -> None:
        self.captions, self.tokenizer = list(captions), tokenizer

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {"index": torch.tensor(i), "tokens": self.tokenizer([self.captions[i]])[0]}
