"""Baseline parts inside DualPromptCLIP: CoOp class-specific vectors and CLIP-Adapter."""
import pytest
import torch

from dualprompt import DualPromptCLIP, PromptConfig, load_prompts

CSC = PromptConfig(attribute_length=3, subcategory_length=0, visual_length=0, text_depth=2,
                   attribute_init="a photo of", class_names=["Bengal", "egyptian_mau", "mau"])
ADAPTER = PromptConfig(attribute_length=0, subcategory_length=0, visual_length=0,
                       image_adapter_ratio=0.2, text_adapter_ratio=0.2)


def test_captions_find_their_class_by_name_longest_first(tiny_clip, tokenizer):
    model = DualPromptCLIP(tiny_clip, CSC, tokenizer=tokenizer)
    tokens = tokenizer(["This is a photo of Egyptian Mau. It has spots.", "a bengal cat",
                        "a mau", "a sphynx cat"])
    assert model.caption_classes(tokens).tolist() == [1, 0, 2, -1]


def test_class_specific_vectors_are_chosen_per_caption(tiny_clip, tokenizer):
    model = DualPromptCLIP(tiny_clip, CSC, tokenizer=tokenizer)
    assert model.attribute.vectors.shape == (3, 2, 3, 64)  # (classes, depth, length, width)
    # every class starts from the same words, as in CoOp
    torch.testing.assert_close(model.attribute.vectors[0, 0], model.attribute.vectors[2, 0])
    tokens = tokenizer(["a bengal cat", "an egyptian mau", "a sphynx cat"])
    with torch.no_grad():
        before = model.encode_text(tokens)
        model.attribute.vectors[1].add_(torch.randn(2, 3, 64))  # egyptian_mau's vectors only
        after = model.encode_text(tokens)
    torch.testing.assert_close(after[0], before[0])  # bengal: untouched
    assert not torch.allclose(after[1], before[1], atol=1e-4)  # its own class
    assert not torch.allclose(after[2], before[2], atol=1e-4)  # unknown class: the mean set


def test_class_specific_prompt_file_round_trip(tiny_clip, tokenizer, tmp_path):
    model = DualPromptCLIP(tiny_clip, CSC, tokenizer=tokenizer)
    with torch.no_grad():
        model.attribute.vectors.add_(torch.randn_like(model.attribute.vectors))
    tokens = tokenizer(["a bengal cat", "an egyptian mau", "a sphynx cat"])
    loaded = load_prompts(model.save_prompts(tmp_path / "csc.safetensors"), tiny_clip,
                          tokenizer=tokenizer)
    assert loaded.config.class_names == CSC.class_names
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_text(tokens), model.encode_text(tokens))


def test_adapters_mix_the_features_by_the_ratio(tiny_clip, batch):
    images, tokens = batch
    model = DualPromptCLIP(tiny_clip, ADAPTER)
    assert {n for n, _ in model.named_parameters() if _.requires_grad} == {
        "image_adapter.mlp.0.weight", "image_adapter.mlp.2.weight",
        "text_adapter.mlp.0.weight", "text_adapter.mlp.2.weight"}
    assert model.image_adapter.mlp[0].weight.shape == (8, 32)  # embed 32 / reduction 4
    with torch.no_grad():
        plain_i, plain_t = tiny_clip.encode_image(images), tiny_clip.encode_text(tokens)
        got_i, got_t = model.encode_image(images), model.encode_text(tokens)
        torch.testing.assert_close(got_i, 0.8 * plain_i + 0.2 * model.image_adapter.mlp(plain_i))
        torch.testing.assert_close(got_t, 0.8 * plain_t + 0.2 * model.text_adapter.mlp(plain_t),
                                   rtol=1e-5, atol=1e-5)


def test_adapters_train_and_reload(tiny_clip, batch, tmp_path):
    images, tokens = batch
    model = DualPromptCLIP(tiny_clip, ADAPTER)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    img, txt, scale = model(images, tokens)
    loss = -(img * txt).sum()
    loss.backward()
    opt.step()
    loaded = load_prompts(model.save_prompts(tmp_path / "adapter.safetensors"), tiny_clip)
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_image(images), model.encode_image(images))


@pytest.mark.parametrize("fields, message", [
    ({"image_adapter_ratio": 1.5}, "image_adapter_ratio"),
    ({"adapter_reduction": 0}, "adapter_reduction"),
    ({"class_names": ["a", "a"]}, "duplicates"),
    ({"class_names": ["a"], "attribute_length": 0}, "attribute_length > 0"),
    ({"class_names": ["a"], "coupled": True}, "cannot be coupled"),
])
def test_baseline_fields_are_validated(fields, message):
    with pytest.raises(ValueError, match=message):
        PromptConfig(**fields)
