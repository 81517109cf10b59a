"""The pieces of `python -m dualprompt.embed`: what to embed, a predict module that gathers
embeddings across ranks in a fixed order, and the files it writes (NumPy, ids, FAISS)."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from ..data import load_fdrd_json, load_karpathy_json
from ..data.images import IMAGE_SUFFIXES, ImageIndex
from ..data.records import read_json_file
from .data import load_image

log = logging.getLogger(__name__)

KINDS = ("image", "text")


class InputFormat(str, Enum):
    AUTO = "auto"  # a folder: images; .json: karpathy if it has "images", else fdrd; else text
    IMAGES = "images"  # a folder of images, searched recursively
    FDRD = "fdrd"  # an FDRD caption file
    KARPATHY = "karpathy"  # a Karpathy caption file (dataset_coco.json, dataset_flickr30k.json)
    TEXT = "text"  # a text file, one caption per line (blank lines skipped)


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


class EmbedModule(L.LightningModule):
    """L2-normalised embeddings of every predict dataloader (one per kind, in `kinds` order).

    After `Trainer.predict`, `features[kind]` holds (N, D) float32 on the CPU of every rank,
    rows ordered by dataset index whatever the number of processes (ranks are gathered and
    sorted by index). Every rank holds the whole gathered array: N * D * 4 bytes."""

    def __init__(self, model: nn.Module, kinds: Sequence[str], dim: int) -> None:
        super().__init__()
        self.model, self.kinds, self.dim = model, list(kinds), dim
        self._local: dict[str, list[tuple[Tensor, Tensor]]] = {k: [] for k in self.kinds}
        self.features: dict[str, np.ndarray] = {}

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int,
                     dataloader_idx: int = 0) -> Tensor:
        kind = self.kinds[dataloader_idx]
        if kind == "image":
            features = self.model.encode_image(batch["image"], normalize=True)  # (B, D)
        else:
            features = self.model.encode_text(batch["tokens"], normalize=True)  # (B, D)
        self._local[kind].append((batch["index"], features.float()))
        return features  # kept by Lightning only with return_predictions=True

    def on_predict_epoch_end(self) -> None:
        for kind in self.kinds:  # every rank gathers every kind, even with no local rows
            parts = self._local[kind]
            index = torch.cat([i for i, _ in parts]) if parts else torch.zeros(0, dtype=torch.long)
            features = (torch.cat([f for _, f in parts]) if parts
                        else torch.zeros(0, self.dim, device=self.device))
            self.features[kind] = self._gather(index.to(self.device), features).cpu().numpy()
            self._local[kind] = []

    def _gather(self, index: Tensor, features: Tensor) -> Tensor:
        """Local index (n,) and features (n, D) -> all ranks' rows ordered by index (N, D)."""
        if self.trainer.world_size > 1:
            counts = self.all_gather(torch.tensor(index.numel(), device=self.device))  # (W,)
            pad = int(counts.max()) - index.numel()  # all_gather needs equal shapes
            index = self.all_gather(F.pad(index, (0, pad), value=-1)).flatten()  # (W * m,)
            features = self.all_gather(F.pad(features, (0, 0, 0, pad))).flatten(0, 1)
            features, index = features[index >= 0], index[index >= 0]
        order = index.argsort()
        if not torch.equal(index[order], torch.arange(index.numel(), device=index.device)):
            raise RuntimeError("gathered embeddings do not cover each dataset index once")
        return features[order]


def write_embeddings(out: Path, kind: str, features: np.ndarray, ids: Sequence[str]) -> dict:
    """`<kind>_embeddings.npy` (float32 (N, D)) and `<kind>_ids.txt` (one id per line)."""
    if features.shape[0] != len(ids):
        raise ValueError(f"{kind}: {features.shape[0]} embeddings for {len(ids)} ids")
    np.save(out / f"{kind}_embeddings.npy", features.astype(np.float32, copy=False))
    write_lines(out / f"{kind}_ids.txt", ids)
    return {"embeddings": f"{kind}_embeddings.npy", "ids": f"{kind}_ids.txt"}


def write_lines(path: Path, lines: Sequence[str]) -> None:
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")


def import_faiss() -> Any:
    try:
        import faiss
    except ImportError as e:
        raise ImportError("faiss=true needs FAISS: pip install 'dualprompt[faiss]' "
                          f"(or faiss-cpu / faiss-gpu) ({e})") from e
    return faiss


def write_faiss_index(path: Path, features: np.ndarray) -> None:
    """An exact inner-product index (`IndexFlatIP`): cosine search on normalised rows."""
    faiss = import_faiss()
    index = faiss.IndexFlatIP(features.shape[1])
    index.add(np.ascontiguousarray(features, dtype=np.float32))
    tmp = path.with_name(f".{path.name}.tmp")
    faiss.write_index(index, str(tmp))
    os.replace(tmp, path)
