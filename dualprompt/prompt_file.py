"""Prompt files: the learned tensors of a `DualPromptCLIP` in one small `.safetensors` file.

The file holds only the learned tensors (no pickle), with string metadata: the prompt config
and a fingerprint of the base model it was trained on (architecture + checksum of some frozen
weights), so that loading it onto another CLIP is refused with both fingerprints named.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Union

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from . import towers
from .config import PromptConfig

FORMAT = "dualprompt.prompts"
FORMAT_VERSION = "1"


class PromptFileError(ValueError):
    """A prompt file that cannot be read or does not fit the given model."""


def base_fingerprint(clip: nn.Module) -> dict[str, Any]:
    """Architecture summary and a checksum of frozen weights of an open_clip model.

    The checksum hashes, in float16 (so fp32 and fp16 copies of a model agree), the text
    tower's positional embedding, final norm, projection and first block, and the image
    tower's first and last parameter tensors (for open_clip's ViT: its class and positional
    embeddings, final norm, projection and first block, as in files written before other
    towers were supported).
    """
    tower = towers.text_tower(clip)
    visual = clip.visual
    vit = towers.takes_visual_prompts(clip)
    arch = {
        "model": type(clip).__name__,
        "image_tower": type(getattr(visual, "trunk", visual)).__name__,
        "embed_dim": towers.embed_dim(clip),
        "text_width": tower.width,
        "text_layers": tower.layers,
        "context_length": int(clip.context_length),
        "vocab_size": int(tower.token_embedding.num_embeddings),
        "vision_width": towers.vision_width(clip) if vit else None,
        "vision_layers": towers.vision_layers(clip),
        "image_size": list(towers.image_size(clip)),
    }
    if towers.is_clip_vit(clip):
        del arch["model"], arch["image_tower"]  # the keys of files from before other towers
        arch["patch_size"] = list(visual.patch_size)
        tensors = [clip.positional_embedding, clip.ln_final.weight, visual.class_embedding,
                   visual.positional_embedding, visual.ln_post.weight]
        tensors += [p for p in (clip.text_projection, visual.proj) if isinstance(p, Tensor)]
        tensors += list(clip.transformer.resblocks[0].parameters())
        tensors += list(visual.transformer.resblocks[0].parameters())
    else:
        projection = tower.projection
        tensors = [tower.positional_embedding, tower.ln_final.weight]
        tensors += (list(projection.parameters()) if isinstance(projection, nn.Module)
                    else [projection] if projection is not None else [])
        tensors += list(tower.transformer.resblocks[0].parameters())
        image = list(visual.parameters())
        tensors += image[:8] + image[-4:]
    digest = hashlib.sha256()
    for t in tensors:
        digest.update(t.detach().to("cpu", torch.float16).contiguous().numpy().tobytes())
    return {"arch": arch, "checksum": digest.hexdigest()[:16]}


def save_prompts(model: nn.Module, path: Union[str, Path]) -> Path:
    """Write `model.prompt_state_dict()` atomically (temp file then rename) to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.prompt_state_dict().items()}
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "prompt_config": model.config.to_json(),
        "base_fingerprint": json.dumps(base_fingerprint(model.clip), sort_keys=True),
    }
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)  # mkstemp makes 0600; prompt files travel between teams
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def read_prompt_file(path: Union[str, Path]) -> tuple[dict[str, Tensor], PromptConfig, dict]:
    """Read tensors, config and base fingerprint; PromptFileError if it is not a prompt file."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except FileNotFoundError:
        raise
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise PromptFileError(f"{path}: not a readable safetensors prompt file ({e})") from e
    if metadata.get("format") != FORMAT:
        raise PromptFileError(f"{path}: not a dualprompt prompt file "
                              f"(metadata format={metadata.get('format')!r})")
    if metadata.get("format_version") != FORMAT_VERSION:
        raise PromptFileError(f"{path}: prompt file format version "
                              f"{metadata.get('format_version')!r} is not supported "
                              f"(this dualprompt reads {FORMAT_VERSION})")
    try:
        config = PromptConfig.from_dict(json.loads(metadata["prompt_config"]))
        fingerprint = json.loads(metadata["base_fingerprint"])
    except (KeyError, ValueError, TypeError) as e:
        raise PromptFileError(f"{path}: invalid prompt file metadata ({e})") from e
    return tensors, config, fingerprint
