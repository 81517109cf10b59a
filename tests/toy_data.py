"""A small FDRD-format dataset written to disk by the tests: real PNG files and caption JSON."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 60, 220),
           "yellow": (230, 220, 40)}
CLASSES = {"alpha": ("red", "stripes"), "beta": ("green", "dots"), "gamma": ("blue", "stripes"),
           "delta": ("yellow", "dots")}


def _image(colour: str, pattern: str, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    a = np.full((32, 32, 3), 128, np.uint8) + rng.integers(0, 20, (32, 32, 3), dtype=np.uint8)
    x, y = rng.integers(2, 10, 2)
    patch = np.zeros((20, 20, 3), np.uint8) + np.array(COLOURS[colour], np.uint8)
    if pattern == "stripes":
        patch[::4] = 0
    else:
        patch[::5, ::5] = 255
    a[y:y + 20, x:x + 20] = patch
    return Image.fromarray(a)


def write_toy_fdrd(root: Path, domains=("toy_a", "toy_b"), per_class: dict | None = None,
                   unique_captions: bool = False) -> Path:
    """root/<domain>/{images/*.png, train.json, test.json}; 4 classes, FDRD schema A-like.

    unique_captions: number each image's description, so that no two captions (and, on a
    random model, no two scores) are equal: retrieval ranks then have no ties."""
    per_class = per_class or {"train": 6, "test": 3}
    for d, domain in enumerate(domains):
        (root / domain / "images").mkdir(parents=True, exist_ok=True)
        for split, n in per_class.items():
            records = {}
            for c, (cls, (colour, pattern)) in enumerate(CLASSES.items()):
                for i in range(n):
                    name = f"{cls}_{split}_{i:03d}"
                    _image(colour, pattern, seed=hash((d, split, c, i)) % 2**32).save(
                        root / domain / "images" / f"{name}.png")
                    number = f", picture {i} of {split}" if unique_captions else ""
                    desc = f"A {colour} square with {pattern} on a grey background{number}."
                    others = [o for o in CLASSES if o != cls]
                    records[name] = {
                        "file_name": f"{name}.png", "class_name": cls,
                        "file_path": f"/somewhere/else/{name}.png",
                        "positive": f"This is a photo of {cls}.{desc}",
                        "negative": [f"This is a photo of {o}.{desc}" for o in others] + [
                            f"This is a photo of {cls}.{desc}"],  # a shipped defect
                    }
            (root / domain / f"{split}.json").write_text(json.dumps(records))
    return root


def write_toy_karpathy(root: Path, per_class: int = 2, captions_per_image: int = 3) -> Path:
    """root/{images/*.png, captions.json}: a Karpathy-format test split, several distinct
    captions per image (no two equal)."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    images = []
    for c, (cls, (colour, pattern)) in enumerate(CLASSES.items()):
        for i in range(per_class):
            name = f"{cls}_{i:03d}.png"
            _image(colour, pattern, seed=1000 + 10 * c + i).save(root / "images" / name)
            sentences = [{"raw": f"{variant} {colour} square with {pattern}, {cls} number {i}."}
                         for variant in ("A", "One", "Some", "The", "This")[:captions_per_image]]
            images.append({"filename": name, "filepath": "images", "split": "test",
                           "imgid": len(images), "sentences": sentences})
    (root / "captions.json").write_text(json.dumps({"images": images, "dataset": "toy"}))
    return root


def write_hydra_configs(conf: Path, data_root: Path, model_config: Path,
                        domains=("toy_a", "toy_b")) -> Path:
    """A user's own config dir (hydra.searchpath) with dataset=toy and model=tiny."""
    (conf / "dataset").mkdir(parents=True, exist_ok=True)
    (conf / "model").mkdir(parents=True, exist_ok=True)
    lines = ["name: toy", f"root: {data_root}", "val_fraction: 0.25", "domains:"]
    lines += [f"  {d}: {{train: {d}/train.json, test: {d}/test.json, images: {d}/images}}"
              for d in domains]
    lines += [f"train_domains: [{domains[0]}]", f"test_domains: [{', '.join(domains)}]"]
    (conf / "dataset" / "toy.yaml").write_text("\n".join(lines) + "\n")
    (conf / "model" / "tiny.yaml").write_text(
        f"name: {model_config.stem}\npretrained: null\nconfig_file: {model_config}\n")
    return conf
