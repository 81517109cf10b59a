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


# Tiny models of the other open_clip layouts, built from open_clip configs as users' are:
# SigLIP-shaped (CustomTextCLIP: bidirectional text pooled at the last position, a logit bias,
# timm's test ViT with an attention-pool head) and EVA-shaped (timm Eva with rotary embeddings,
# registered with timm below as a user would register their own timm model).
SIGLIP_TINY = "dualprompt-test-bidir"  # not "siglip": open_clip would pick a hub tokenizer
EVA_TINY = "dualprompt-test-eva"
TINY_TEXT = {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}
SIGLIP_TINY_CFG = {
    "embed_dim": 32, "init_logit_bias": -10, "custom_text": True,
    "vision_cfg": {"image_size": 160, "timm_model_name": "test_vit3",
                   "timm_model_pretrained": False, "timm_pool": "map", "timm_proj": "linear"},
    "text_cfg": {**TINY_TEXT, "no_causal_mask": True, "pool_type": "last", "proj_bias": True},
}
EVA_TINY_CFG = {
    "embed_dim": 32, "custom_text": True,
    "vision_cfg": {"image_size": 32, "timm_model_name": "dualprompt_test_eva",
                   "timm_model_pretrained": False, "timm_pool": "map", "timm_proj": None},
    "text_cfg": TINY_TEXT,
}


def _register_tiny_eva() -> None:
    import timm
    from timm.models import register_model
    from timm.models.eva import Eva

    if "dualprompt_test_eva" in timm.list_models("dualprompt_*"):
        return

    @register_model
    def dualprompt_test_eva(pretrained: bool = False, **kwargs):
        kwargs = {k: v for k, v in kwargs.items() if k in ("num_classes", "global_pool")}
        return Eva(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=2,
                   use_rot_pos_emb=True, ref_feat_shape=(4, 4), attn_type="rope",
                   use_pre_transformer_norm=True, attn_pool_num_heads=2, **kwargs)


@pytest.fixture(scope="session")
def other_layout_configs(tmp_path_factory) -> dict[str, Path]:
    """{name: config file} of the tiny SigLIP- and EVA-shaped models, registered."""
    _register_tiny_eva()
    folder = tmp_path_factory.mktemp("other_layouts")
    paths = {}
    for name, cfg in ((SIGLIP_TINY, SIGLIP_TINY_CFG), (EVA_TINY, EVA_TINY_CFG)):
        paths[name] = folder / f"{name}.json"
        paths[name].write_text(json.dumps(cfg))
        open_clip.add_model_config(paths[name])
    return paths
