"""Offline assets a config may ask for: the procedural world and its small pretrained CLIP."""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Optional

from ..loading import LOCAL_DIR
from .schema import DatasetConfig, ModelConfig, OfflineAsset

log = logging.getLogger(__name__)


def prepare_offline_assets(dataset: Optional[DatasetConfig], model: ModelConfig) -> None:
    """Build what `dataset.generate` / `model.pretrain` ask for, if it is not there yet.

    Both are cached: the world by a manifest of its parameters, the CLIP by a manifest of its
    pretraining config; a second run reuses them. `dataset` None: the model only.
    """
    if dataset is not None and dataset.generate == OfflineAsset.world:
        from ..world import WorldConfig, build_world
        build_world(Path(dataset.root).expanduser(),
                    WorldConfig(**set_fields(dataset.generate_args)))
    if model.pretrain == OfflineAsset.world:
        if not model.name.startswith(LOCAL_DIR):
            raise ValueError("model.pretrain=world needs model.name=local-dir:<folder> "
                             f"(where the pretrained CLIP is cached), got {model.name!r}")
        from ..world import PretrainConfig, ensure_pretrained_clip
        ensure_pretrained_clip(Path(model.name[len(LOCAL_DIR):]).expanduser(),
                               PretrainConfig(**set_fields(model.pretrain_args)))


def set_fields(args: Any) -> dict[str, Any]:
    """The fields of a `WorldArgs` / `PretrainArgs` that are set, as keyword arguments of the
    world's own config (lists as tuples, as its dataclasses hold them)."""
    if args is None:
        return {}
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(args)}
    return {k: tuple(v) if isinstance(v, list) else dict(v) if isinstance(v, dict) else v
            for k, v in values.items() if v is not None}
