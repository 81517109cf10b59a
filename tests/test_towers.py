"""Parity of the re-run towers with open_clip on tiny models of every layout, and refusal of
unsupported towers (the full-size backbones are in test_backbones.py)."""
import copy

import open_clip
import pytest
import torch
from open_clip.model import CLIPTextCfg, CLIPVisionCfg, CustomTextCLIP

from dualprompt import DualPromptCLIP, PromptConfig, base_fingerprint, towers
from dualprompt.towers.blocks import lora_weights
from tests.conftest import EVA_TINY, SIGLIP_TINY

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


def test_coca_style_text_tower_is_refused_by_name():
    clip = CustomTextCLIP(32, CLIPVisionCfg(layers=1, width=64, head_width=32, patch_size=8,
                                            image_size=32),
                          CLIPTextCfg(width=64, heads=2, layers=1, embed_cls=True))
    with pytest.raises(NotImplementedError, match="CustomTextCLIP.*class token"):
        DualPromptCLIP(clip)
    with pytest.raises(NotImplementedError, match="CustomTextCLIP.*class token"):
        base_fingerprint(clip)


def test_resnet_image_tower_takes_text_prompts_and_refuses_visual_ones_by_name(batch):
    torch.manual_seed(0)
    clip = open_clip.model.CLIP(32, CLIPVisionCfg(layers=[1, 1, 1, 1], width=16, image_size=64),
                                CLIPTextCfg(width=64, heads=2, layers=1)).eval()
    for config in (PromptConfig(), PromptConfig(visual_length=0, lora_rank=2)):
        with pytest.raises(NotImplementedError, match="ModifiedResNet.*visual_length=0"):
            DualPromptCLIP(clip, config)
    model = DualPromptCLIP(clip, PromptConfig(visual_length=0, attribute_init=None))
    images, tokens = torch.randn(2, 3, 64, 64), batch[1][:2]
    with torch.no_grad():  # the image tower runs as open_clip runs it
        torch.testing.assert_close(model.encode_image(images), clip.encode_image(images),
                                   atol=0, rtol=0)
    model.encode_text(tokens).sum().backward()
    assert {n for n, p in model.named_parameters() if p.grad is not None} == {
        "attribute.vectors", "subcategory.vectors", "subcategory.keys"}


# -- other layouts: CustomTextCLIP text towers, timm ViT and Eva image towers -------------

LAYOUTS = [SIGLIP_TINY, EVA_TINY]


def _layout(name: str):
    torch.manual_seed(0)
    clip = open_clip.create_model(name, pretrained=None).eval()
    with torch.no_grad():  # timm's test ViT starts its LayerScales at 1e-5, which would hide
        for module in clip.modules():  # every block's effect from the assertions below
            if type(module).__name__ == "LayerScale":
                module.gamma.fill_(1.0)
    images = torch.randn(2, 3, *towers.image_size(clip))
    return clip, images


@pytest.mark.parametrize("name", LAYOUTS)
def test_other_layouts_match_open_clip_with_prompts_off(other_layout_configs, tokenizer, name):
    """Text: the re-run tower is open_clip's exactly (SigLIP's bidirectional tower keeps its
    whole window, EVA's causal one is trimmed); image: the family's re-run with a prompt of
    length 0 is open_clip's `encode_image`."""
    clip, images = _layout(name)
    tokens = tokenizer(["a photo of a striped cat on a sofa", "two dogs"],
                       context_length=clip.context_length)
    model = DualPromptCLIP(clip, OFF)
    assert model.trim_context == (name == EVA_TINY)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_text(tokens), clip.encode_text(tokens),
                                   atol=1e-6, rtol=1e-5)
        empty = [torch.zeros(0, towers.vision_width(clip))]
        torch.testing.assert_close(towers.encode_image(clip.visual, images, empty),
                                   clip.encode_image(images), atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", LAYOUTS)
def test_visual_prompt_tokens_have_no_position(other_layout_configs, name):
    """Prompt tokens are appended after the position embedding and, in Eva, get the identity
    rotation: swapping two of them leaves the features unchanged, while they do change them."""
    clip, images = _layout(name)
    torch.manual_seed(1)
    prompt = torch.randn(2, towers.vision_width(clip))
    with torch.no_grad():
        out = towers.encode_image(clip.visual, images, [prompt])
        swapped = towers.encode_image(clip.visual, images, [prompt.flip(0)])
        deep = towers.encode_image(clip.visual, images, [prompt, -3 * prompt])
    assert _moved(swapped, out) < 1e-5
    assert _moved(out, clip.encode_image(images)) > 1e-3
    assert _moved(deep, out) > 1e-3  # the deep replacement reaches layer 1


def _moved(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative distance (random-init towers differ widely in output scale)."""
    return float((a - b).detach().norm() / b.detach().norm())


@pytest.mark.parametrize("name", LAYOUTS)
def test_lora_on_timm_blocks_equals_patched_weights(other_layout_configs, name):
    """Low-rank deltas on a timm tower give what the tower gives with its q, k, v and output
    weights patched in place (on a copy)."""
    clip, images = _layout(name)
    torch.manual_seed(2)
    trunk = clip.visual.trunk
    width = towers.vision_width(clip)
    deltas = [{t: 0.05 * torch.randn(width, width) for t in "qkvo"} for _ in trunk.blocks]
    patched = copy.deepcopy(clip.visual)
    with torch.no_grad():
        for block, d in zip(patched.trunk.blocks, deltas):
            block.attn.qkv.weight += torch.cat([d["q"], d["k"], d["v"]])
            block.attn.proj.weight += d["o"]
        expected = patched(images)
        ours = towers.encode_image(clip.visual, images, (), block_weights=[
            lora_weights(b, d) for b, d in zip(trunk.blocks, deltas)])
    assert _moved(ours, expected) < 1e-5
    assert _moved(ours, clip.encode_image(images)) > 1e-3


def test_bidirectional_text_tower_keeps_its_window(other_layout_configs, tokenizer):
    """Without a causal mask the prompts take the place of the window's last columns: the
    sequence stays context_length long and pools at its last position; a caption that fills
    the window is cut, not dropped. The pool query reads the plain feature of the caption."""
    clip, _ = _layout(SIGLIP_TINY)
    model = DualPromptCLIP(clip, PromptConfig(visual_length=0), tokenizer=tokenizer)
    long = " ".join(["striped"] * 60)
    tokens = tokenizer(["two dogs", long], context_length=clip.context_length)
    seen = []
    hook = clip.text.transformer.resblocks[0].register_forward_hook(
        lambda m, args, out: seen.append(out.shape))
    with torch.no_grad():
        features = model.encode_text(tokens)
    hook.remove()
    assert features.shape == (2, 32) and torch.isfinite(features).all()
    with torch.no_grad():
        torch.testing.assert_close(model.text_query(tokens), clip.encode_text(tokens))
    # the pool query (the caption's plain feature) and the prompted pass: both whole windows
    assert seen == [torch.Size([2, clip.context_length, 64])] * 2


def test_the_default_method_falls_back_to_text_prompts_on_a_resnet_with_one_log_line(caplog):
    from dualprompt.loading import LoadedClip
    from dualprompt.training.methods import PromptTuning
    from dualprompt.training.schema import ModelConfig

    clip = open_clip.model.CLIP(32, CLIPVisionCfg(layers=[1, 1, 1, 1], width=16, image_size=64),
                                CLIPTextCfg(width=64, heads=2, layers=1)).eval()
    loaded = LoadedClip(clip, None, None, open_clip.tokenize, "tiny-rn")
    config = PromptConfig(attribute_init=None, lora_rank=2)  # LoRA on both towers
    with caplog.at_level("WARNING", logger="dualprompt.training.methods"):
        model = PromptTuning().build_model(loaded, config, ModelConfig(), [],
                                           visual_optional=True)
    assert model.visual_prompts is None and model.attribute is not None
    assert model.image_lora is None and model.text_lora is not None
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "ModifiedResNet takes no visual prompts or LoRA" in lines[0]
    with pytest.raises(NotImplementedError, match="ModifiedResNet"):  # VPT, MaPLe: refused
        PromptTuning().build_model(loaded, config, ModelConfig(), [])


@pytest.mark.parametrize("kind, bias, sigmoid", [("auto", None, False), ("auto", -10.0, True),
                                                 ("infonce", -10.0, False),
                                                 ("sigmoid", -10.0, True)])
def test_loss_kind_follows_the_model_unless_set(tiny_clip, kind, bias, sigmoid):
    from dualprompt.training.module import PromptRetrievalModule
    from dualprompt.training.schema import LossConfig

    if bias is not None:
        tiny_clip.logit_bias = torch.nn.Parameter(torch.tensor(bias))
    module = PromptRetrievalModule(DualPromptCLIP(tiny_clip, PromptConfig(attribute_init=None)),
                                   loss=LossConfig(kind=kind))
    assert module.sigmoid == sigmoid


def test_sigmoid_loss_on_a_model_without_a_bias_is_a_clear_error(tiny_clip):
    from dualprompt.training.module import PromptRetrievalModule
    from dualprompt.training.schema import LossConfig

    with pytest.raises(ValueError, match="loss.kind=sigmoid needs a model with a logit bias"):
        PromptRetrievalModule(DualPromptCLIP(tiny_clip, PromptConfig(attribute_init=None)),
                              loss=LossConfig(kind="sigmoid"))
