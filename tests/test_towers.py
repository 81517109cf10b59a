"""Parity of the re-run towers with open_clip, and refusal of unsupported towers."""
import open_clip
import pytest
import torch
from open_clip.model import CLIPTextCfg, CLIPVisionCfg, CustomTextCLIP

from dualprompt import DualPromptCLIP, PromptConfig, base_fingerprint

OFF = PromptConfig(attribute_length=0, subcategory_length=0, visual_length=0)


@pytest.mark.parametrize("trim, atol", [(False, 1e-6), (True, 1e-5)])
def test_all_lengths_zero_matches_open_clip(tiny_clip, batch, trim, atol):
    """Untrimmed, the re-run text tower is open_clip's to 1e-6; trimming the padding changes
    only the float summation order of the attention (seen: 1.1e-6 on one of 128 values with
    torch 2.14, so 1e-5 there)."""
    images, tokens = batch
    model = DualPromptCLIP(tiny_clip, OFF, trim_context=trim)
    assert model.num_trainable_parameters() == 0
    with torch.no_grad():
        torch.testing.assert_close(model.encode_text(tokens), tiny_clip.encode_text(tokens),
                                   atol=atol, rtol=0)
        torch.testing.assert_close(model.encode_image(images), tiny_clip.encode_image(images),
                                   atol=1e-6, rtol=0)
        ours, theirs = model(images, tokens), tiny_clip(images, tokens)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, atol=atol, rtol=0)


def test_avg_pool_tower_drops_prompts_before_pooling(tiny_config_file, batch):
    """Visual prompts never enter the pooled token set, whatever the pool type."""
    clip = open_clip.create_model("dualprompt-test-tiny", pretrained=None)
    clip.visual.pool_type = "avg"
    model = DualPromptCLIP(clip, OFF)
    images, _ = batch
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(images), clip.encode_image(images),
                                   atol=1e-6, rtol=0)


def test_custom_text_clip_is_refused_by_name():
    clip = CustomTextCLIP(32, CLIPVisionCfg(layers=1, width=64, head_width=32, patch_size=8,
                                            image_size=32),
                          CLIPTextCfg(width=64, heads=2, layers=1))
    with pytest.raises(NotImplementedError, match="CustomTextCLIP"):
        DualPromptCLIP(clip)
    with pytest.raises(NotImplementedError, match="CustomTextCLIP"):
        base_fingerprint(clip)


def test_resnet_image_tower_is_refused_by_name():
    clip = open_clip.model.CLIP(32, CLIPVisionCfg(layers=[1, 1, 1, 1], width=16, image_size=64),
                                CLIPTextCfg(width=64, heads=2, layers=1))
    with pytest.raises(NotImplementedError, match="ModifiedResNet"):
        DualPromptCLIP(clip)
