"""Prompts on the open_clip backbones teams serve, built from open_clip's own configs with
random weights (no downloads), on CPU with a batch of 2.

For each: prompts off give the wrapped model's `encode_image` / `encode_text`; the default
prompts train (gradients on prompt tensors only, the backbone bit-identical after a step); a
prompt file round-trips exactly and is refused by another backbone. RN50: text prompts train,
visual prompts are refused by name.
"""
from __future__ import annotations

import open_clip
import pytest
import torch

from dualprompt import (DualPromptCLIP, PromptConfig, PromptFileError, contrastive_loss,
                        load_prompts, sigmoid_loss, towers)
from tests.conftest import make_tiny_clip

BACKBONES = ["ViT-B-16-SigLIP2", "EVA02-B-16", "PE-Core-B-16", "ViT-L-14-quickgelu"]
OFF = PromptConfig(attribute_length=0, subcategory_length=0, visual_length=0)
CAPTIONS = ["a photo of a striped cat on a sofa", "two dogs"]


@pytest.fixture(scope="module", params=BACKBONES)
def backbone(request):
    torch.manual_seed(0)
    clip = open_clip.create_model(request.param, pretrained=None).eval()
    images = torch.randn(2, 3, *towers.image_size(clip))
    # open_clip's CLIP tokenizer: offline, and its ids are inside every vocabulary here
    # (SigLIP2's Gemma tokenizer would need the hub)
    tokens = open_clip.tokenize(CAPTIONS, context_length=clip.context_length)
    return request.param, clip, images, tokens


def test_prompts_off_give_the_wrapped_model(backbone):
    name, clip, images, tokens = backbone
    with torch.no_grad():
        text, image = clip.encode_text(tokens), clip.encode_image(images)
        for trim in (False, True):  # trimming applies where it is exact (causal towers)
            model = DualPromptCLIP(clip, OFF, trim_context=trim)
            torch.testing.assert_close(model.encode_text(tokens), text, atol=1e-5, rtol=1e-4)
        assert model.trim_context == (name != "ViT-B-16-SigLIP2")
        # the tower family's own re-run, with a visual prompt of length 0
        empty = [torch.zeros(0, towers.vision_width(clip))]
        torch.testing.assert_close(towers.encode_image(clip.visual, images, empty), image,
                                   atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(model.encode_image(images), image, atol=0, rtol=0)


def test_default_prompts_train_and_leave_the_backbone_untouched(backbone):
    name, clip, images, tokens = backbone
    before = {k: v.clone() for k, v in clip.state_dict().items()}
    model = DualPromptCLIP(clip, PromptConfig(), tokenizer=open_clip.tokenize)
    assert model.visual_prompts is not None and model.subcategory is not None
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    image_features = model.encode_image(images, normalize=True)
    text_features = model.encode_text(tokens, normalize=True)
    scale = model.logit_scale.exp()
    loss = (sigmoid_loss(image_features, text_features, scale, model.logit_bias)
            if model.logit_bias is not None
            else contrastive_loss(image_features, text_features, scale))
    loss.backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad == set(model.prompt_state_dict())
    assert {"attribute.vectors", "subcategory.vectors", "visual_prompts.vectors"} <= with_grad
    for n in ("attribute.vectors", "visual_prompts.vectors"):
        assert model.get_parameter(n).grad.abs().sum() > 0, n
    learned = {k: v.clone() for k, v in model.prompt_state_dict().items()}
    optimizer.step()
    assert any(not torch.equal(learned[k], v) for k, v in model.prompt_state_dict().items())
    after = clip.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_prompt_file_round_trip_and_refusal(backbone, tmp_path, tiny_config_file):
    name, clip, images, tokens = backbone
    model = DualPromptCLIP(clip, PromptConfig(), tokenizer=open_clip.tokenize)
    torch.manual_seed(5)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))
    path = model.save_prompts(tmp_path / "prompts.safetensors")
    loaded = load_prompts(path, clip)
    for k, v in model.prompt_state_dict().items():
        assert torch.equal(loaded.prompt_state_dict()[k], v), k
    with torch.no_grad():
        assert torch.equal(loaded.encode_text(tokens), model.encode_text(tokens))
        assert torch.equal(loaded.encode_image(images), model.encode_image(images))
    # a file from another backbone, both ways
    with pytest.raises(PromptFileError, match="another base model"):
        load_prompts(path, make_tiny_clip())
    tiny = DualPromptCLIP(make_tiny_clip(), PromptConfig(attribute_init=None))
    with pytest.raises(PromptFileError, match="another base model"):
        load_prompts(tiny.save_prompts(tmp_path / "tiny.safetensors"), clip)


def test_rn50_trains_text_prompts_and_refuses_visual_ones():
    torch.manual_seed(0)
    clip = open_clip.create_model("RN50", pretrained=None).eval()
    with pytest.raises(NotImplementedError, match="ModifiedResNet"):
        DualPromptCLIP(clip, PromptConfig())
    model = DualPromptCLIP(clip, PromptConfig(visual_length=0), tokenizer=open_clip.tokenize)
    images = torch.randn(2, 3, 224, 224)
    tokens = open_clip.tokenize(CAPTIONS)
    loss = contrastive_loss(model.encode_image(images, normalize=True),
                            model.encode_text(tokens, normalize=True), model.logit_scale.exp())
    loss.backward()
    assert {n for n, p in model.named_parameters() if p.grad is not None} == set(
        model.prompt_state_dict())
    assert model.get_parameter("attribute.vectors").grad.abs().sum() > 0
