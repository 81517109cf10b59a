"""Load a prompt file onto the CLIP a pipeline already serves."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import nn

from .model import DualPromptCLIP
from .prompt_file import PromptFileError, base_fingerprint, read_prompt_file


def load_prompts(path: Union[str, Path], clip_model: nn.Module, *,
                 check_fingerprint: bool = True, trim_context: bool = True,
                 map_location: Optional[Union[str, torch.device]] = None,
                 tokenizer: Optional[Any] = None) -> nn.Module:
    """Load a prompt file onto `clip_model` and return the `DualPromptCLIP`.

    tokenizer: the model's tokenizer (`open_clip.get_tokenizer(name)`), used to find the class
    names of class-specific prompts in captions; open_clip's default tokenizer if None.

    Raises PromptFileError naming both fingerprints when the file was trained on another base
    model (pass check_fingerprint=False to override, e.g. for a re-quantised copy).
    """
    tensors, config, saved = read_prompt_file(path)
    if check_fingerprint:
        current = base_fingerprint(clip_model)
        if current != saved:
            raise PromptFileError(
                f"{path} was trained on another base model.\n  prompt file: {json.dumps(saved)}"
                f"\n  given model: {json.dumps(current)}\nLoad it onto the CLIP it was trained on"
                " (or pass check_fingerprint=False if you know the weights are equivalent).")
    # Word init is skipped: the learned tensors overwrite it.
    model = DualPromptCLIP(clip_model, dataclasses.replace(config, attribute_init=None),
                           tokenizer=tokenizer, trim_context=trim_context)
    model.config = config
    expected = model.prompt_state_dict()
    if set(expected) != set(tensors):
        raise PromptFileError(f"{path}: tensors {sorted(tensors)} do not match the prompt "
                              f"config, which needs {sorted(expected)}")
    for name, value in tensors.items():
        if value.shape != expected[name].shape:
            raise PromptFileError(f"{path}: tensor {name} has shape {tuple(value.shape)}, the "
                                  f"model needs {tuple(expected[name].shape)}")
    device = map_location or next(clip_model.parameters()).device
    model.load_state_dict(tensors, strict=False)
    return model.to(device)
