"""Loading the base CLIP the way open_clip users name it: hub tags, local files, local dirs."""
from __future__ import annotations

import json
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import open_clip
from torch import nn

log = logging.getLogger(__name__)

LOCAL_DIR = "local-dir:"
CONFIG_FILE = "open_clip_config.json"  # an open_clip model folder: config + weights
WEIGHTS_FILE = "open_clip_model.safetensors"


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


def open_clip_config(name: str, cache_dir: Optional[str] = None) -> dict:
    """The open_clip model config (embed_dim, vision_cfg, text_cfg) of a model named as in
    `load_clip`: a registered architecture, "local-dir:/path" or "hf-hub:org/repo"."""
    if name.startswith(LOCAL_DIR):
        path = Path(name[len(LOCAL_DIR):]).expanduser() / CONFIG_FILE
        return json.loads(path.read_text())["model_cfg"]
    if name.startswith("hf-hub:"):
        from open_clip.factory import _get_hf_config  # the config that create_model used
        return _get_hf_config(name[len("hf-hub:"):], cache_dir=cache_dir)["model_cfg"]
    config = open_clip.get_model_config(name)
    if config is None:
        raise ValueError(f"no open_clip model config for {name!r}; pass model.config_file")
    return config


def save_clip_folder(model: nn.Module, folder: Path, model_cfg: dict) -> Path:
    """Write a whole CLIP as an open_clip folder that `load_clip("local-dir:" + folder)` and
    open_clip's own `create_model_and_transforms("local-dir:...")` load: open_clip_config.json
    (model_cfg + the model's preprocess_cfg) and open_clip_model.safetensors. The folder is
    written beside its final name and renamed into place, so a kill leaves the old one."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        preprocess = getattr(model.visual, "preprocess_cfg", {}) or {}
        hub = {"model_cfg": model_cfg,
               "preprocess_cfg": {k: list(v) if isinstance(v, tuple) else v
                                  for k, v in preprocess.items()}}
        (tmp / CONFIG_FILE).write_text(json.dumps(hub, indent=1))
        old = folder.with_name(f".{folder.name}.old")
        if folder.exists():
            folder.rename(old)
        tmp.rename(folder)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder
