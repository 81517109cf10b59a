"""The reliability harness: cases, outcomes, and the inputs they are built from (a small
FDRD-format dataset on disk, a tiny random CLIP, broken image bytes)."""
from __future__ import annotations

import functools
import io
import json
import logging
import struct
import tempfile
import traceback
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import open_clip
import torch
from PIL import Image

from dualprompt import PromptConfig
from dualprompt.training.datamodule import RetrievalDataModule
from dualprompt.training.schema import DatasetConfig, DomainConfig

TINY = {"embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32,
                       "patch_size": 8},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2,
                     "layers": 2}}
PROMPTS = PromptConfig(attribute_length=2, subcategory_length=2, visual_length=2,
                       attribute_init=None)
CLASSES = {"alpha": (220, 30, 30), "beta": (30, 200, 40), "gamma": (30, 60, 220),
           "delta": (230, 220, 40)}
BAD = "alpha_train_000"  # the record whose image or caption a case breaks


@functools.cache
def tiny_clip(seed: int = 0) -> torch.nn.Module:
    """A tiny random-init open_clip CLIP (the architecture registered once)."""
    if "reliability-tiny" not in open_clip.list_models():
        config = Path(tempfile.mkdtemp()) / "reliability-tiny.json"
        config.write_text(json.dumps(TINY))
        open_clip.add_model_config(config)
    torch.manual_seed(seed)
    return open_clip.create_model("reliability-tiny", pretrained=None).eval()


@functools.cache
def tokenizer() -> Callable:
    return open_clip.get_tokenizer("ViT-B-32")


# -- cases and outcomes ----------------------------------------------------------------
@dataclass
class Outcome:
    kind: str  # error | skipped | loaded | crash
    message: str


@dataclass
class Case:
    group: str
    name: str
    expect: str  # the outcome kind that is correct
    must_name: tuple[str, ...]  # strings the message must contain (file, record, ...)
    run: Callable[[Path], Outcome]


CASES: list[Case] = []


def case(group: str, name: str, expect: str, *must_name: str):
    def register(run: Callable[[Path], Outcome]) -> Callable[[Path], Outcome]:
        CASES.append(Case(group, name, expect, must_name, run))
        return run
    return register


# -- inputs ----------------------------------------------------------------------------
def write_dataset(root: Path) -> Path:
    """root/toy/{images/*.png, train.json, test.json}: 4 classes, 3 train + 2 test each."""
    (root / "toy" / "images").mkdir(parents=True)
    for split, n in (("train", 3), ("test", 2)):
        records = {}
        for cls, colour in CLASSES.items():
            for i in range(n):
                key = f"{cls}_{split}_{i:03d}"
                Image.new("RGB", (32, 32), colour).save(root / "toy" / "images" / f"{key}.png")
                desc = f"A square on a grey background, picture {i}."
                records[key] = {"file_name": f"{key}.png", "class_name": cls,
                                "positive": f"This is a photo of {cls}.{desc}",
                                "negative": [f"This is a photo of {o}.{desc}"
                                             for o in CLASSES if o != cls]}
        (root / "toy" / f"{split}.json").write_text(json.dumps(records))
    return root


def to_tensor(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(img.resize((32, 32)))).permute(2, 0, 1).float() / 255


def data_module(root: Path, skip: bool = False, **domain: str) -> RetrievalDataModule:
    files = {"train": "toy/train.json", "test": "toy/test.json", "images": "toy/images"}
    cfg = DatasetConfig(name="toy", root=str(root),
                        domains={"toy": DomainConfig(**{**files, **domain})},
                        train_domains=["toy"], test_domains=["toy"], val_fraction=0.25,
                        skip_bad_images=skip)
    return RetrievalDataModule(cfg, tokenizer=tokenizer(), train_transform=to_tensor,
                               eval_transform=to_tensor, batch_size=2, eval_batch_size=4,
                               num_workers=0)


def load_all(dm: RetrievalDataModule) -> int:
    dm.setup()
    loaders = [dm.train_dataloader(), *dm.val_dataloader(), *dm.test_dataloader()]
    return sum(len(b["image"]) for loader in loaders for b in loader)


def attempt(fn: Callable[[], str], errors=(ValueError, FileNotFoundError, RuntimeError)) -> Outcome:
    """Run fn; an expected error type is an "error" outcome, any other exception a crash."""
    try:
        return Outcome("loaded", fn())
    except errors as e:
        return Outcome("error", f"{type(e).__name__}: {e}")
    except Exception as e:  # noqa: BLE001 - that is the point: report it as a crash
        return Outcome("crash", f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=3)}")


def png_header(width: int, height: int) -> bytes:
    """A PNG announcing width x height 1-bit pixels in a few hundred bytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * (1 + width // 8) * 4)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def jpeg(size=(64, 64), mode="RGB") -> bytes:
    rng = np.random.default_rng(0)
    img = Image.fromarray((rng.random((size[1], size[0], 3)) * 255).astype(np.uint8))
    buf = io.BytesIO()
    img.convert(mode).save(buf, "JPEG")
    return buf.getvalue()


def corrupt_middle(data: bytes) -> bytes:
    """200 random bytes over the middle of the file."""
    middle = len(data) // 2
    noise = np.random.default_rng(1).integers(0, 256, 200, dtype=np.uint8).tobytes()
    return data[:middle] + noise + data[middle + 200:]


def pil_bytes(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


class capture_log:
    """Collect the WARNING log lines of dualprompt while inside."""

    def __enter__(self) -> io.StringIO:
        self.logger, self.buffer = logging.getLogger("dualprompt"), io.StringIO()
        self.handler, self.level = logging.StreamHandler(self.buffer), self.logger.level
        self.logger.addHandler(self.handler)
        self.logger.setLevel(logging.WARNING)
        self.logger.propagate = False  # keep the console quiet
        return self.buffer

    def __exit__(self, *exc) -> None:
        self.logger.removeHandler(self.handler)
        self.logger.setLevel(self.level)
        self.logger.propagate = True
