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
        build_world(Path(dataset.root).expanduser(), WorldConfig(**dataset.generate_args))
    if model.pretrain == "world":
        if not model.name.startswith(LOCAL_DIR):
            raise ValueError("model.pretrain=world needs model.name=local-dir:<folder> "
                             f"(where the pretrained CLIP is cached), got {model.name!r}")
        from ..world import ensure_pretrained_clip
        ensure_pretrained_clip(Path(model.name[len(LOCAL_DIR):]).expanduser())
