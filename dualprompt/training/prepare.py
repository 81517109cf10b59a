"""Offline assets a config may ask for: the procedural world and its small pretrained CLIP."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

from ..loading import LOCAL_DIR
from .schema import DatasetConfig, ModelConfig

log = logging.getLogger(__name__)


def prepare_offline_assets(dataset: Optional[DatasetConfig], model: ModelConfig) -> None:
    """Build what `dataset.generate` / `model.pretrain` ask for, if it is not there yet.

    Both are cached: the world by a manifest of its parameters, the CLIP by a manifest of its
    pretraining config; a second run reuses them. `dataset` None: the model only.
    """
    if dataset is not None and dataset.generate not in (None, "world"):
        raise ValueError(f"dataset.generate must be null or world, got {dataset.generate!r}")
    if model.pretrain not in (None, "world"):
        raise ValueError(f"model.pretrain must be null or world, got {model.pretrain!r}")
    if dataset is not None and dataset.generate == "world":
        from ..world import WorldConfig, build_world
        build_world(Path(dataset.root).expanduser(), WorldConfig(**_args(dataset.generate_args)))
    if model.pretrain == "world":
        if not model.name.startswith(LOCAL_DIR):
            raise ValueError("model.pretrain=world needs model.name=local-dir:<folder> "
                             f"(where the pretrained CLIP is cached), got {model.name!r}")
        from ..world import PretrainConfig, ensure_pretrained_clip
        ensure_pretrained_clip(Path(model.name[len(LOCAL_DIR):]).expanduser(),
                               PretrainConfig(**_args(model.pretrain_args)))


def _args(value) -> dict:
    """A config's {field: value} block (None when unset) as plain keyword arguments."""
    if value is None:
        return {}
    from omegaconf import DictConfig, OmegaConf
    if isinstance(value, DictConfig):
        value = OmegaConf.to_container(value, resolve=True)
    if not isinstance(value, dict):
        raise ValueError(f"expected a mapping of field: value, got {value!r}")
    return {k: tuple(v) if isinstance(v, list) else v for k, v in value.items()}
