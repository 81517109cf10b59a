"""Loading the base CLIP the way open_clip users name it: hub tags, local files, local dirs."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import open_clip
from torch import nn

log = logging.getLogger(__name__)

LOCAL_DIR = "local-dir:"


@dataclass
class LoadedClip:
    """A base CLIP with its transforms and tokenizer, as open_clip returns them."""

    model: nn.Module
    preprocess_train: Callable
    preprocess_val: Callable
    tokenizer: Callable
    name: str


def load_clip(name: str, pretrained: Optional[str] = None, *,
              config_file: Optional[str] = None, precision: str = "fp32",
              device: str = "cpu", cache_dir: Optional[str] = None) -> LoadedClip:
    """Create an open_clip model and its transforms and tokenizer.

    name: an open_clip architecture ("ViT-B-32"), "hf-hub:org/repo", or "local-dir:/path"
        (a folder with open_clip_config.json + weights; `pretrained` is then ignored).
    pretrained: a tag ("openai", "laion2b_s34b_b79k"), a local weights file
        (.safetensors/.pt/.bin, a plain CLIP state dict), "local-dir:/path", or None (random).
    config_file: an extra open_clip model-config JSON to register first, for custom
        architectures; its file stem is the architecture name unless `name` is given.
    """
    if config_file is not None:
        path = Path(config_file).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"model config file not found: {path}")
        open_clip.add_model_config(path)
        name = name or path.stem
    if pretrained and pretrained.startswith(LOCAL_DIR):
        name, pretrained = pretrained, None
    if name.startswith(LOCAL_DIR):
        folder = Path(name[len(LOCAL_DIR):]).expanduser()
        if not (folder / "open_clip_config.json").is_file():
            raise FileNotFoundError(f"{folder}: not an open_clip model folder "
                                    "(open_clip_config.json missing)")
        name = LOCAL_DIR + str(folder.resolve())
    elif pretrained and _looks_like_path(pretrained):
        path = Path(pretrained).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"pretrained weights file not found: {path}")
        pretrained = str(path.resolve())
    try:
        model, preprocess_train, preprocess_val = open_clip.create_model_and_transforms(
            name, pretrained=pretrained, precision=precision, device=device, cache_dir=cache_dir)
    except RuntimeError as e:
        raise RuntimeError(
            f"could not create open_clip model {name!r} with pretrained={pretrained!r}: {e}\n"
            "Hub tags need network access; offline, pass a local weights file or "
            "local-dir:/path instead.") from e
    log.info("loaded base CLIP %s (pretrained=%s)", name, pretrained)
    return LoadedClip(model.eval(), preprocess_train, preprocess_val,
                      open_clip.get_tokenizer(name), name)


def _looks_like_path(value: str) -> bool:
    if value.startswith("hf-hub:"):
        return False
    return ("/" in value or value.startswith((".", "~"))
            or value.endswith((".safetensors", ".pt", ".pth", ".bin")))
