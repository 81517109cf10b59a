"""Parity of the re-run towers with open_clip on tiny models of every layout, and refusal of
unsupported towers (the full-size backbones are in test_backbones.py)."""
import copy
import dataclasses
import logging

import open_clip
import pytest
import torch
from open_clip.model import CLIPTextCfg, CLIPVisionCfg, CustomTextCLIP

from dualprompt import DualPromptCLIP, PromptConfig, base_fingerprint, towers
from dualprompt.towers.blocks import kept_rows, lora_weights
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


@pytest.mark.parametrize("weights", ["frozen", "fine-tuned", "merged LoRA", "low-rank LoRA"])
@pytest.mark.parametrize("tower", ["text", "image"])
def test_a_block_computes_only_the_rows_that_are_read(tiny_clip, tower, weights):
    """`run_block(..., rows=)` (one row: the block before pooling; all but the prompts: a block
    whose prompt outputs the next layer replaces) gives the module's own outputs at those rows,
    and the same gradients to the input, the LoRA factors and (fine-tuned) the block's
    weights; text under the causal mask."""
    clip = copy.deepcopy(tiny_clip)
    blocks = towers.text_blocks(clip) if tower == "text" else towers.vision_blocks(clip)
    block, width = blocks[-1], blocks[-1].attn.embed_dim
    torch.manual_seed(0)
    x = torch.randn(4, 9, width, requires_grad=True)
    kwargs = {"attn_mask": clip.attn_mask[:9, :9]} if tower == "text" else {}
    lora = DualPromptCLIP(clip, PromptConfig(
        attribute_length=0, subcategory_length=0, visual_length=0, lora_rank=2,
        lora_targets=["q", "k", "v", "o", "mlp_in", "mlp_out"]))
    lora = lora.text_lora if tower == "text" else lora.image_lora
    with torch.no_grad():
        for name, factor in lora.named_parameters():
            if name.endswith("b"):
                factor.normal_(std=0.05)
    block.requires_grad_(weights == "fine-tuned")

    def run(**extra):
        if weights == "merged LoRA":
            return towers.run_block(block, x, lora_weights(block, lora()[-1]), **extra, **kwargs)
        if weights == "low-rank LoRA":
            return towers.run_block(block, x, towers.LowRank(lora.factors()[-1]), **extra,
                                    **kwargs)
        return block(x, **kwargs) if not extra else towers.run_block(block, x, **extra, **kwargs)

    everything = run()
    for rows in (torch.tensor([[8], [0], [3], [5]]), kept_rows(x, 1, 3)):
        assert run(rows=rows).shape == (4, rows.shape[1], width)
        grad = torch.randn(4, rows.shape[1], width)
        results = []
        for out in (everything[torch.arange(4)[:, None], rows], run(rows=rows)):
            tensors = [t for t in (x, *lora.parameters(), *block.parameters()) if t.requires_grad]
            grads = torch.autograd.grad((out * grad).sum(), tensors, retain_graph=True,
                                        allow_unused=True)
            results.append((out, grads))
        (expected, expected_grads), (alone, alone_grads) = results
        torch.testing.assert_close(alone, expected, atol=1e-5, rtol=1e-5)
        assert expected_grads[0].abs().max() > 0
        for g, e in zip(alone_grads, expected_grads):
            if e is None:
                assert g is None or g.abs().max() == 0
            else:
                torch.testing.assert_close(g, e, atol=1e-5, rtol=1e-4)


def test_deep_prompts_give_the_towers_outputs_of_every_row_computed(tiny_clip, batch):
    """The towers skip the rows nobody reads (prompt outputs the next layer replaces, every
    position after the last block but the pooled one); their features equal open_clip's
    blocks run on every row, with the prompts replaced in place."""
    from dualprompt.towers.blocks import replace
    images, tokens = batch
    torch.manual_seed(0)
    text = towers.text_tower(tiny_clip)
    deep = [torch.randn(3, text.width) for _ in range(text.layers - 1)]
    x = torch.cat([text.token_embedding(tokens[:, :1]), torch.randn(4, 3, text.width),
                   text.token_embedding(tokens[:, 1:20])], dim=1)
    end = tokens[:, :20].argmax(-1) + 3
    h = x + text.positional_embedding[:x.shape[1]]
    for i, block in enumerate(text.transformer.resblocks):
        if i:
            h = replace(h, deep[i - 1], 1)
        h = block(h, attn_mask=text.attn_mask[:x.shape[1], :x.shape[1]])
    expected = text.ln_final(h)[torch.arange(4), end]
    torch.testing.assert_close(towers.text_hidden(text, x, deep, prompt_start=1, at=end),
                               expected, atol=1e-5, rtol=1e-5)

    visual = tiny_clip.visual
    prompts = [torch.randn(2, visual.class_embedding.shape[0]) for _ in range(3)]
    h = torch.cat([visual._embeds(images), visual.ln_pre(prompts[0]).expand(4, -1, -1)], dim=1)
    for i, block in enumerate(visual.transformer.resblocks):
        if i:
            h = replace(h, prompts[i], h.shape[1] - 2)
        h = block(h)
    expected = visual._pool(h[:, :-2])[0] @ visual.proj
    torch.testing.assert_close(towers.encode_image(visual, images, prompts), expected,
                               atol=1e-5, rtol=1e-5)


def _moved(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative distance (random-init towers differ widely in output scale)."""
    return float((a - b).detach().norm() / b.detach().norm())


@pytest.mark.parametrize("name", LAYOUTS)
def test_lora_on_timm_blocks_equals_patched_weights(other_layout_configs, name):
    """Low-rank deltas on a timm tower give what the tower gives with its q, k, v, output and
    MLP weights patched in place (on a copy)."""
    clip, images = _layout(name)
    torch.manual_seed(2)
    trunk = clip.visual.trunk
    width = towers.vision_width(clip)
    hidden = towers.mlp_width(trunk.blocks[0])
    deltas = [{**{t: 0.05 * torch.randn(width, width) for t in "qkvo"},
               "mlp_in": 0.05 * torch.randn(hidden, width),
               "mlp_out": 0.05 * torch.randn(width, hidden)} for _ in trunk.blocks]
    patched = copy.deepcopy(clip.visual)
    with torch.no_grad():
        for block, d in zip(patched.trunk.blocks, deltas):
            block.attn.qkv.weight += torch.cat([d["q"], d["k"], d["v"]])
            block.attn.proj.weight += d["o"]
            block.mlp.fc1.weight += d["mlp_in"]
            block.mlp.fc2.weight += d["mlp_out"]
        expected = patched(images)
        ours = towers.encode_image(clip.visual, images, (), block_weights=[
            lora_weights(b, d) for b, d in zip(trunk.blocks, deltas)])
    assert _moved(ours, expected) < 1e-5
    assert _moved(ours, clip.encode_image(images)) > 1e-3


@pytest.mark.parametrize("name", LAYOUTS)
def test_lora_dropout_on_timm_blocks_is_not_applied_and_says_so(
        other_layout_configs, name, caplog):
    """timm / EVA blocks run LoRA as merged weights, which have no per-input dropout: the model
    warns at build, naming the tower, and training-mode features draw no mask."""
    clip, images = _layout(name)
    config = dataclasses.replace(OFF, lora_rank=2, lora_towers=["image"], lora_dropout=0.5)
    with caplog.at_level(logging.WARNING, logger="dualprompt.model"):
        model = DualPromptCLIP(clip, config).train()
    assert "prompt.lora_dropout=0.5 is not applied on the image tower" in caplog.text
    with torch.no_grad():
        model.image_lora.b.normal_(std=0.05)
    first = model.encode_image(images)
    torch.testing.assert_close(model.encode_image(images), first, atol=0, rtol=0)
    assert _moved(first, clip.encode_image(images)) > 1e-3  # LoRA acts, without dropout


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
