"""Prompt files: exact round trip, refusal of other base models, no pickle, small size."""
import json

import open_clip
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from dualprompt import DualPromptCLIP, PromptConfig, PromptFileError, load_prompts
from tests.conftest import make_tiny_clip

CONFIG = PromptConfig(attribute_length=3, subcategory_length=2, visual_length=3, text_depth=2,
                      visual_depth=2, coupled=True, attribute_init="a photo of")


def _trained(clip):
    model = DualPromptCLIP(clip, CONFIG)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p))
    return model


def test_round_trip_is_bit_identical(tiny_config_file, tmp_path, batch):
    images, tokens = batch
    model = _trained(make_tiny_clip(seed=0))
    path = model.save_prompts(tmp_path / "prompts.safetensors")
    with safe_open(str(path), framework="pt") as f:
        assert set(f.keys()) == set(model.prompt_state_dict())
        assert json.loads(f.metadata()["prompt_config"]) == CONFIG.to_dict()
    # a freshly built copy of the same base model, as a serving pipeline would have
    loaded = load_prompts(path, make_tiny_clip(seed=0))
    assert loaded.config == CONFIG
    with torch.no_grad():
        assert torch.equal(loaded.encode_text(tokens), model.encode_text(tokens))
        assert torch.equal(loaded.encode_image(images), model.encode_image(images))
    assert not list(tmp_path.glob("*.tmp"))  # atomic write left no temp file


def test_other_base_model_is_refused_with_both_fingerprints(tiny_config_file, tmp_path):
    model = _trained(make_tiny_clip(seed=0))
    path = model.save_prompts(tmp_path / "p.safetensors")
    saved = json.loads(safe_open(str(path), framework="pt").metadata()["base_fingerprint"])
    other = make_tiny_clip(seed=1)
    with pytest.raises(PromptFileError) as err:
        load_prompts(path, other)
    message = str(err.value)
    assert saved["checksum"] in message
    from dualprompt import base_fingerprint
    assert base_fingerprint(other)["checksum"] in message
    load_prompts(path, other, check_fingerprint=False)  # explicit override works


def test_fingerprint_ignores_dtype_but_not_weights(tiny_config_file):
    from dualprompt import base_fingerprint
    a = make_tiny_clip(seed=0)
    assert base_fingerprint(a) == base_fingerprint(make_tiny_clip(seed=0).half())
    assert base_fingerprint(a) != base_fingerprint(make_tiny_clip(seed=2))


def test_files_that_are_not_prompt_files_are_refused(tiny_clip, tmp_path):
    plain = tmp_path / "weights.safetensors"
    save_file({"x": torch.zeros(2)}, str(plain))
    with pytest.raises(PromptFileError, match="not a dualprompt prompt file"):
        load_prompts(plain, tiny_clip)
    pickled = tmp_path / "prompts.pt"
    torch.save({"x": torch.zeros(2)}, pickled)
    with pytest.raises(PromptFileError, match="not a readable safetensors"):
        load_prompts(pickled, tiny_clip)
    with pytest.raises(FileNotFoundError):
        load_prompts(tmp_path / "missing.safetensors", tiny_clip)


def test_tensors_not_matching_the_config_are_refused(tiny_clip, tmp_path):
    path = _trained(tiny_clip).save_prompts(tmp_path / "p.safetensors")
    with safe_open(str(path), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    tensors["attribute.vectors"] = tensors["attribute.vectors"][:, :2].contiguous()
    save_file(tensors, str(path), metadata=meta)
    with pytest.raises(PromptFileError, match="attribute.vectors has shape"):
        load_prompts(path, tiny_clip)


def test_vit_b_32_default_prompt_file_is_small(tmp_path):
    clip = open_clip.create_model("ViT-B-32", pretrained=None)
    model = DualPromptCLIP(clip, PromptConfig())
    path = model.save_prompts(tmp_path / "vit-b-32.safetensors")
    assert path.stat().st_size < 2 * 1024 * 1024
    full = sum(p.numel() for p in clip.parameters())
    assert model.num_trainable_parameters() < full / 1000
