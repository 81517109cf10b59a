"""DualPromptCLIP contract: frozen backbone, prompt groups, truncation, training."""
import open_clip
import pytest
import torch
import torch.nn.functional as F

from dualprompt import DualPromptCLIP, PromptConfig, category_loss, contrastive_loss
from dualprompt.tokens import fit_to_window

DEEP = PromptConfig(attribute_length=4, subcategory_length=2, visual_length=3, text_depth=2,
                    visual_depth=3)
COUPLED = PromptConfig(attribute_length=3, subcategory_length=2, visual_length=3, text_depth=3,
                       visual_depth=2, coupled=True, attribute_init="a photo of")


@pytest.mark.parametrize("config", [PromptConfig(), DEEP, COUPLED], ids=["default", "deep", "coupled"])
def test_gradients_reach_only_prompts_and_backbone_is_untouched(tiny_clip, batch, config):
    images, tokens = batch
    before = {k: v.clone() for k, v in tiny_clip.state_dict().items()}
    model = DualPromptCLIP(tiny_clip, config)
    model.train()
    assert not tiny_clip.training and all(not m.training for m in tiny_clip.modules())
    assert all(not p.requires_grad for p in tiny_clip.parameters())
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert sum(p.numel() for p in trainable) == model.num_trainable_parameters() > 0
    opt = torch.optim.SGD(trainable, lr=0.5)
    img, txt, scale = model(images, tokens)
    contrastive_loss(img, txt, scale).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable)
    assert all(p.grad is None for p in tiny_clip.parameters())
    opt.step()
    for k, v in tiny_clip.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_each_prompt_group_changes_only_its_side(tiny_clip, batch):
    images, tokens = batch
    base = DualPromptCLIP(tiny_clip, PromptConfig(attribute_length=0, subcategory_length=0,
                                                  visual_length=0))
    with torch.no_grad():
        t0, i0 = base.encode_text(tokens), base.encode_image(images)
        for kw, side in [({"attribute_length": 2}, "text"), ({"subcategory_length": 2}, "text"),
                         ({"visual_length": 2}, "image")]:
            cfg = dict(attribute_length=0, subcategory_length=0, visual_length=0,
                       attribute_init=None) | kw
            model = DualPromptCLIP(tiny_clip, PromptConfig(**cfg))
            t, i = model.encode_text(tokens), model.encode_image(images)
            assert (not torch.allclose(t, t0, atol=1e-4)) == (side == "text"), kw
            assert (not torch.allclose(i, i0, atol=1e-4)) == (side == "image"), kw


def test_deep_prompts_matter(tiny_clip, batch):
    """Changing a layer-2 prompt changes features (deep prompts are really injected)."""
    images, tokens = batch
    model = DualPromptCLIP(tiny_clip, DEEP)
    with torch.no_grad():
        t0, i0 = model.encode_text(tokens), model.encode_image(images)
        model.attribute.vectors[1].add_(torch.randn(4, 64))  # not a constant: LayerNorm
        model.visual_prompts.vectors[2].add_(torch.randn(3, 64))  # would remove that
        assert not torch.allclose(model.encode_text(tokens), t0, atol=1e-4)
        assert not torch.allclose(model.encode_image(images), i0, atol=1e-4)


def test_coupled_visual_prompts_follow_text_vectors(tiny_clip, batch):
    images, _ = batch
    model = DualPromptCLIP(tiny_clip, COUPLED)
    assert model.visual_prompts.vectors is None and len(model.visual_prompts.coupling) == 2
    with torch.no_grad():
        i0 = model.encode_image(images)
        model.attribute.vectors[0].add_(torch.randn(3, 64))
        assert not torch.allclose(model.encode_image(images), i0, atol=1e-4)


def test_attribute_init_from_words(tiny_clip, tokenizer):
    model = DualPromptCLIP(tiny_clip, PromptConfig(attribute_length=5, attribute_init="a photo of a"))
    ids = tokenizer(["a photo of a"])[0, 1:5]
    expected = tiny_clip.token_embedding.weight[ids]
    torch.testing.assert_close(model.attribute.vectors[0, :4], expected)
    assert not torch.allclose(model.attribute.vectors[0, 4], expected[-1])
    short = DualPromptCLIP(tiny_clip, PromptConfig(attribute_length=2, attribute_init="a photo of a"))
    torch.testing.assert_close(short.attribute.vectors[0], expected[:2])  # first tokens, as MaPLe


@pytest.mark.parametrize("query", ["feature", "tokens"])
def test_subcategory_prompts_depend_on_the_input_not_a_label(tiny_clip, tokenizer, query):
    model = DualPromptCLIP(tiny_clip, PromptConfig(subcategory_query=query, subcategory_pool_size=4))
    tokens = tokenizer(["a Bengal cat", "an Egyptian Mau"])
    eot = tokens.argmax(-1)
    prompts = model.subcategory(model.subcategory_query(tokens, eot))  # (2, m, W)
    assert prompts.shape == (2, 2, 64)
    assert not torch.allclose(prompts[0], prompts[1])
    weights = model.subcategory.mixing_weights(model.subcategory_query(tokens, eot))
    torch.testing.assert_close(weights.sum(-1), torch.ones(2))


@pytest.mark.parametrize("fraction, layers", [(1.0, 3), (0.5, 2), (0.33, 1)])
def test_a_feature_query_reads_out_after_its_share_of_the_frozen_layers(
        tiny_clip, tokenizer, fraction, layers):
    """All layers: the CLIP's own text feature; fewer: the end token's state after them."""
    model = DualPromptCLIP(tiny_clip, PromptConfig(subcategory_query_depth_fraction=fraction))
    assert model.query_layers == layers
    tokens = tokenizer(["a Bengal cat on a sofa", "an Egyptian Mau"])
    with torch.no_grad():
        x = tiny_clip.token_embedding(tokens) + tiny_clip.positional_embedding
        for block in tiny_clip.transformer.resblocks[:layers]:
            x = block(x, attn_mask=tiny_clip.attn_mask)
        end = tokens.argmax(-1)
        expected = tiny_clip.ln_final(x)[torch.arange(2), end] @ tiny_clip.text_projection
    torch.testing.assert_close(model.text_query(tokens), expected, atol=1e-5, rtol=1e-4)
    if layers == 3:
        torch.testing.assert_close(expected, tiny_clip.encode_text(tokens), atol=1e-5, rtol=1e-4)


def test_fit_to_window_keeps_the_end_token(tokenizer):
    tokens = tokenizer(["word " * 100, "short caption"])
    eot = tokens.argmax(-1)
    fitted, new_eot, seq_len = fit_to_window(tokens, eot, prompt_length=6)
    assert fitted.shape[1] + 6 == seq_len <= 77
    assert new_eot.tolist() == [70, int(eot[1])]
    assert fitted[0, 70] == tokenizer.eot_token_id
    assert torch.equal(fitted[0, :70], tokens[0, :70])
    assert torch.equal(fitted[1, : eot[1] + 1], tokens[1, : eot[1] + 1])


def test_long_caption_is_truncated_like_the_tokenizer_would(tiny_clip, tokenizer):
    """A caption too long once prompts are inserted equals the caption tokenized to the
    remaining window (EOT kept at the end)."""
    model = DualPromptCLIP(tiny_clip, DEEP)
    long = "a striped cat " * 40
    n = model.config.text_length
    short = torch.zeros(1, 77, dtype=torch.long)
    short[:, : 77 - n] = tokenizer([long], context_length=77 - n)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_text(tokenizer([long])), model.encode_text(short))


def test_token_weights_scale_caption_tokens(tiny_clip, batch):
    images, tokens = batch
    model = DualPromptCLIP(tiny_clip)
    with torch.no_grad():
        plain = model.encode_text(tokens)
        torch.testing.assert_close(model.encode_text(tokens, token_weights=torch.ones(tokens.shape)),
                                   plain)
        w = torch.ones(tokens.shape)
        w[:, 2] = 0.0
        assert not torch.allclose(model.encode_text(tokens, token_weights=w), plain, atol=1e-4)


def test_a_few_steps_lower_the_loss(tiny_clip, tokenizer):
    torch.manual_seed(0)
    images = torch.randn(8, 3, 32, 32)
    captions = [f"This is a photo of class {c}. A {c} object" for c in "abcdefgh"]
    tokens = tokenizer(captions)
    negatives = tokenizer([captions[(i + 1) % 8] for i in range(8)])
    model = DualPromptCLIP(tiny_clip, DEEP).train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.05)

    def loss_fn():
        img, txt, scale = model(images, tokens)
        neg = F.normalize(model.encode_text(negatives), dim=-1)
        return contrastive_loss(img, txt, scale) + category_loss(img, txt, neg[:, None], scale)

    first = loss_fn().item()
    for _ in range(15):
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        opt.step()
    assert loss_fn().item() < 0.9 * first


def test_vit_b_32_shapes():
    """Real ViT-B-32 widths (text 512, vision 768), random init, one small batch."""
    torch.manual_seed(0)
    clip = open_clip.create_model("ViT-B-32", pretrained=None).eval()
    model = DualPromptCLIP(clip, COUPLED)
    tokens = open_clip.get_tokenizer("ViT-B-32")(["a photo of a cat", "a plane on a runway"])
    with torch.no_grad():
        img, txt, _ = model(torch.randn(2, 3, 224, 224), tokens)
    assert img.shape == txt.shape == (2, 512)
    assert model.visual_prompts.coupling[0].weight.shape == (768, 512)
    torch.testing.assert_close(img.norm(dim=-1), torch.ones(2))


def test_depth_fractions_become_the_towers_depths(tiny_clip):
    from dualprompt import towers
    model = DualPromptCLIP(tiny_clip, PromptConfig(text_depth_fraction=1.0,
                                                   visual_depth_fraction=0.5))
    layers = towers.text_layers(tiny_clip), towers.vision_layers(tiny_clip)
    assert model.config.text_depth == layers[0] > 1
    assert model.config.visual_depth == -(-layers[1] // 2)
    assert model.config.to_dict()["text_depth_fraction"] is None  # the file holds depths
