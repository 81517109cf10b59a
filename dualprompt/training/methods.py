"""What a method trains, and what it leaves behind: one object per `method.trains` value.

The recipe in `dualprompt.cli.train` asks the method, never branches on it:
- `ZeroShot`: nothing trains; the frozen CLIP is evaluated.
- `PromptTuning`: prompt vectors / adapters on the frozen CLIP (every prompt method and
  CLIP-Adapter); the best epoch is written as a prompt file.
- `FullFineTuning`: every CLIP weight (a baseline); the best epoch is written as an open_clip
  folder, and zero-shot is evaluated on a fresh copy of the base CLIP.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Callable

from safetensors.torch import load_file
from torch import nn

from .. import towers
from ..config import PromptConfig
from ..loading import WEIGHTS_FILE, LoadedClip, open_clip_config, save_clip_folder
from ..model import DualPromptCLIP
from .schema import ModelConfig, Trains

log = logging.getLogger(__name__)


class ZeroShot:
    """Trains nothing."""

    trains_anything = False


class PromptTuning:
    """Learned tensors on the frozen CLIP; the artifact is a prompt file."""

    trains_anything = True
    train_backbone = False

    def build_model(self, clip: LoadedClip, prompt: PromptConfig, model: ModelConfig,
                    class_names: list[str], visual_optional: bool = False) -> DualPromptCLIP:
        image_lora = prompt.lora_rank and "image" in prompt.lora_towers
        if (visual_optional and (prompt.visual_length or image_lora)
                and not towers.takes_visual_prompts(clip.model)):
            log.warning("%s: the image tower %s takes no visual prompts or LoRA; training the "
                        "text side only (method.visual_optional=true)", clip.name,
                        type(clip.model.visual).__name__)
            text_lora = [t for t in prompt.lora_towers if t != "image"]
            prompt = dataclasses.replace(
                prompt, visual_length=0, visual_depth=1, visual_depth_fraction=None,
                coupled=False, lora_rank=prompt.lora_rank if text_lora else 0,
                lora_towers=text_lora or ["text"])
        if class_names:
            prompt = dataclasses.replace(prompt, class_names=class_names)
        return DualPromptCLIP(clip.model, prompt, tokenizer=clip.tokenizer,
                              trim_context=model.trim_context,
                              length_buckets=model.length_buckets,
                              train_backbone=self.train_backbone)

    def artifact(self, run_dir: Path) -> Path:
        return run_dir / "prompts.safetensors"

    def saver(self, clip: LoadedClip, model: ModelConfig) -> Callable[[DualPromptCLIP, Path], None]:
        """How the best epoch is written (called by the `ExportBestPrompts` callback)."""
        return lambda m, path: m.save_prompts(path)

    def restore_best(self, model: DualPromptCLIP, artifact: Path) -> None:
        model.load_state_dict(load_file(str(artifact)), strict=False)

    def zero_shot_model(self, clip: LoadedClip, reload: Callable[[], LoadedClip]) -> nn.Module:
        """The untouched base CLIP for the zero-shot column (the frozen one is untouched)."""
        return clip.model


class FullFineTuning(PromptTuning):
    """Every CLIP weight trains; the artifact is an open_clip folder."""

    train_backbone = True

    def artifact(self, run_dir: Path) -> Path:
        return run_dir / "finetuned"

    def saver(self, clip: LoadedClip, model: ModelConfig) -> Callable[[DualPromptCLIP, Path], None]:
        model_cfg = open_clip_config(clip.name, cache_dir=model.cache_dir)
        return lambda m, path: save_clip_folder(m.clip, path, model_cfg)

    def restore_best(self, model: DualPromptCLIP, artifact: Path) -> None:
        model.clip.load_state_dict(load_file(str(artifact / WEIGHTS_FILE)))

    def zero_shot_model(self, clip: LoadedClip, reload: Callable[[], LoadedClip]) -> nn.Module:
        return reload().model  # the trained copy has moved


def method_for(trains: Trains) -> ZeroShot | PromptTuning:
    return {Trains.none: ZeroShot(), Trains.prompts: PromptTuning(),
            Trains.all: FullFineTuning()}[Trains(trains)]
