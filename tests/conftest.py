"""Shared fixtures: tiny random-init open_clip models built from a JSON model config."""
from __future__ import annotations

import json
from pathlib import Path

import open_clip
import pytest
import torch

from dualprompt import DualPromptCLIP, PromptConfig

TINY_NAME = "dualprompt-test-tiny"
TINY_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 3, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 3},
}
SHARED = Path(__file__).resolve().parents[2] / "shared"


@pytest.fixture(scope="session")
def tiny_config_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("model_configs") / f"{TINY_NAME}.json"
    path.write_text(json.dumps(TINY_CFG))
    open_clip.add_model_config(path)
    return path


def make_tiny_clip(seed: int = 0):
    torch.manual_seed(seed)
    model = open_clip.create_model(TINY_NAME, pretrained=None)
    return model.eval()


# every prompt kind, with deep text prompts: what the CLI tests load from a prompt file
PROMPTS = PromptConfig(attribute_length=2, subcategory_length=2, visual_length=2, text_depth=2,
                       attribute_init=None)


def write_prompt_file(path: Path, seed: int = 3) -> Path:
    """A prompt file for make_tiny_clip(seed) with random (not near-zero) learned tensors."""
    model = DualPromptCLIP(make_tiny_clip(seed=seed), PROMPTS)
    torch.manual_seed(7)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p))
    return model.save_prompts(path)


def write_tiny_model(folder: Path, seed: int = 3) -> tuple[Path, Path]:
    """The tiny model's config JSON and a weights file, as a user would have them on disk."""
    from safetensors.torch import save_file
    model_config = folder / f"{TINY_NAME}.json"
    model_config.write_text(json.dumps(TINY_CFG))
    weights = folder / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in make_tiny_clip(seed=seed).state_dict().items()},
              str(weights))
    return model_config, weights


@pytest.fixture
def tiny_clip(tiny_config_file):
    return make_tiny_clip()


@pytest.fixture(scope="session")
def tokenizer():
    return open_clip.get_tokenizer("ViT-B-32")


@pytest.fixture
def batch(tokenizer):
    torch.manual_seed(1)
    captions = ["This is a photo of a Bengal cat.A striped cat on a sofa.",
                "This is a photo of an Egyptian Mau.A spotted cat in the sun.",
                "a red striped triangle", "two dogs"]
    return torch.randn(len(captions), 3, 32, 32), tokenizer(captions)
