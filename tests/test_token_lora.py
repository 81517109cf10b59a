"""LoRA on the text tower's token embedding (`prompt.token_lora_rank`): parity at the start,
only the words of the training captions move, the file round trip, its lr group, validation."""
from __future__ import annotations

import lightning as L
import pytest
import torch

from dualprompt import DualPromptCLIP, PromptConfig, load_prompts
from dualprompt.training.module import PromptRetrievalModule
from dualprompt.training.schema import OptimConfig, Optimizer
from tests.conftest import make_tiny_clip

TOKEN_LORA = PromptConfig(attribute_length=0, subcategory_length=0, visual_length=0,
                          token_lora_rank=4, token_lora_alpha=2.0)


def test_token_lora_starts_as_the_frozen_clip(tiny_clip, batch):
    _, tokens = batch
    model = DualPromptCLIP(tiny_clip, TOKEN_LORA)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_text(tokens), tiny_clip.encode_text(tokens),
                                   atol=1e-5, rtol=0)
    vocab = tiny_clip.token_embedding.num_embeddings
    assert model.num_trainable_parameters() == vocab * 4 + 4 * 64  # a (V, r) and b (r, W)


def test_only_the_words_of_the_training_captions_move(tiny_clip, tokenizer, batch, tmp_path):
    images, _ = batch
    trained = tokenizer(["a photo of a Faigrain", "a photo of a Stebriskou",
                         "a photo of a Rifulu", "a photo of a Mistazash"])
    unseen = tokenizer(["two dogs"])
    content = unseen[0, 1:unseen[0].argmax()]  # "two", "dogs": no training caption has them
    assert not set(content.tolist()) & set(trained.flatten().tolist())
    before = {k: v.clone() for k, v in tiny_clip.state_dict().items()}
    model = DualPromptCLIP(tiny_clip, TOKEN_LORA)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        logits = (model.encode_image(images, normalize=True)
                  @ model.encode_text(trained, normalize=True).T)
        loss = torch.nn.functional.cross_entropy(logits * 10, torch.arange(4))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert all(torch.equal(before[k], v) for k, v in tiny_clip.state_dict().items())
    moved = model.token_lora.a.detach().abs().sum(-1).nonzero().flatten().tolist()
    # every token of the captions, no other (padding after the end token is causally dead)
    assert set(moved) == set(trained.flatten().tolist()) - {0}
    with torch.no_grad():
        assert (model.encode_text(trained) - tiny_clip.encode_text(trained)).abs().max() > 1e-3
        assert not model.token_lora.a[content].any()
        path = model.save_prompts(tmp_path / "token_lora.safetensors")
        loaded = load_prompts(path, make_tiny_clip())
        torch.testing.assert_close(loaded.encode_text(trained), model.encode_text(trained),
                                   atol=0, rtol=0)


def test_token_lora_trains_with_the_lora_tensors(tiny_clip):
    model = DualPromptCLIP(tiny_clip, PromptConfig(attribute_length=2, subcategory_length=0,
                                                   visual_length=2, lora_rank=2,
                                                   token_lora_rank=2))
    module = PromptRetrievalModule(model, optim=OptimConfig(
        name=Optimizer.adamw, lr=3e-3, lora_lr_scale=3.0, warmup_steps=0))
    module.trainer = L.Trainer(max_steps=10, logger=False, enable_checkpointing=False,
                               enable_progress_bar=False, enable_model_summary=False)
    groups = module.configure_optimizers()["optimizer"].param_groups
    token = {id(p) for p in model.token_lora.parameters()}
    assert [g["lr"] for g in groups] == [pytest.approx(3e-3), pytest.approx(9e-3)]
    assert token <= {id(p) for p in groups[1]["params"]}
    assert not token & {id(p) for p in groups[0]["params"]}


@pytest.mark.parametrize("fields, message", [
    ({"token_lora_rank": -1}, "token_lora_rank"),
    ({"token_lora_rank": 2, "token_lora_alpha": 0.0}, "token_lora_alpha")])
def test_token_lora_fields_are_validated(fields, message):
    with pytest.raises(ValueError, match=message):
        PromptConfig(**fields)
