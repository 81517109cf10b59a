"""CLIP-LoRA on the towers, the consistency terms (KgCoOp, PromptSRC) and Gaussian prompt
aggregation: parity at the start, what trains, the file round trip, the formulas."""
from __future__ import annotations

import dataclasses
import math
from types import SimpleNamespace

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from dualprompt import (DualPromptCLIP, PromptConfig, feature_consistency, load_prompts,
                        logit_consistency, towers)
from dualprompt.towers.blocks import lora_weights
from dualprompt.training.callbacks import GaussianPromptAggregation
from dualprompt.training.module import PromptRetrievalModule
from dualprompt.training.schema import OptimConfig, Optimizer
from tests.conftest import make_tiny_clip

LORA = PromptConfig(attribute_length=0, subcategory_length=0, visual_length=0, lora_rank=2,
                    lora_targets=["q", "k", "v", "o"])
# LoRA on every linear layer of the blocks: attention and the MLP (hidden width 4 x 64)
LORA_ALL = dataclasses.replace(LORA, lora_targets=["q", "k", "v", "o", "mlp_in", "mlp_out"])


def _two_steps(model: torch.nn.Module, loss) -> None:
    """Two AdamW steps (lr 1e-2) on the model's trainable tensors against `loss()`."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):
        opt.zero_grad()
        loss().backward()
        opt.step()


def _randomise_b(lora: torch.nn.Module) -> None:
    """B starts at zero (the frozen CLIP): give every target's B values."""
    with torch.no_grad():
        for name, factor in lora.named_parameters():
            if name.endswith("b"):
                factor.normal_(std=0.05)


def test_lora_starts_as_the_frozen_clip(tiny_clip, batch):
    images, tokens = batch
    model = DualPromptCLIP(tiny_clip, LORA)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(images), tiny_clip.encode_image(images),
                                   atol=1e-5, rtol=0)
        torch.testing.assert_close(model.encode_text(tokens), tiny_clip.encode_text(tokens),
                                   atol=1e-5, rtol=0)
    # 2 x (3 layers x 4 targets x (A: 2 x 64 + B: 64 x 2)) per tower
    assert model.num_trainable_parameters() == 2 * 3 * 4 * (2 * 64 + 64 * 2)


def test_lora_trains_only_its_tensors_and_leaves_the_clip_untouched(tiny_clip, batch, tmp_path):
    images, tokens = batch
    before = {k: v.clone() for k, v in tiny_clip.state_dict().items()}
    model = DualPromptCLIP(tiny_clip, LORA)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):
        loss = -(model.encode_image(images, normalize=True)
                 * model.encode_text(tokens, normalize=True)).sum()
        opt.zero_grad()
        loss.backward()
        assert all(p.grad is None for p in tiny_clip.parameters())
        opt.step()
    assert all(torch.equal(before[k], v) for k, v in tiny_clip.state_dict().items())
    with torch.no_grad():
        moved = (model.encode_text(tokens) - tiny_clip.encode_text(tokens)).abs().max()
        assert moved > 1e-3  # B left zero: the update is live
        path = model.save_prompts(tmp_path / "lora.safetensors")
        loaded = load_prompts(path, make_tiny_clip())
        torch.testing.assert_close(loaded.encode_text(tokens), model.encode_text(tokens),
                                   atol=0, rtol=0)
        torch.testing.assert_close(loaded.encode_image(images), model.encode_image(images),
                                   atol=0, rtol=0)


def test_lora_is_merged_once_for_inference_and_again_when_it_changes(tiny_clip, batch):
    """Without grad the merged weights are kept: the deltas are made once for many calls, and
    made afresh (same numbers as the training path) after the LoRA tensors change."""
    images, tokens = batch
    model = DualPromptCLIP(tiny_clip, LORA)
    merges = []
    model.image_lora.register_forward_hook(lambda *_: merges.append(1))
    with torch.no_grad():
        model.image_lora.b.normal_(std=0.05)
        first = model.encode_image(images)
        again = model.encode_image(images)
    assert len(merges) == 1
    torch.testing.assert_close(again, first, atol=0, rtol=0)
    with torch.no_grad():
        model.image_lora.b.mul_(2.0)  # as an optimizer step does: in place
        changed = model.encode_image(images)
    assert len(merges) == 2 and (changed - first).abs().max() > 1e-3
    in_graph = model.encode_image(images)  # grad on: the low-rank path, nothing merged
    in_graph.sum().backward()
    assert len(merges) == 2 and model.image_lora.b.grad is not None
    torch.testing.assert_close(changed, in_graph.detach(), atol=1e-5, rtol=0)
    with torch.no_grad():
        tiny_clip.visual.transformer.resblocks[0].attn.in_proj_weight.mul_(0.5)  # frozen moved
        model.encode_image(images)
    assert len(merges) == 3


@pytest.mark.parametrize("config", [LORA, LORA_ALL], ids=["attention", "attention and MLP"])
@pytest.mark.parametrize("tower", ["image", "text"])
def test_low_rank_path_equals_merged_weights_with_their_gradients(tiny_clip, batch, tower,
                                                                  config):
    """While LoRA trains, open_clip's blocks run it as x A^T B^T beside the frozen projections;
    features and the factors' gradients are the merged weights' (text: under the causal mask)."""
    images, tokens = batch
    model = DualPromptCLIP(tiny_clip, config)
    lora = model.image_lora if tower == "image" else model.text_lora
    blocks = (towers.vision_blocks(tiny_clip) if tower == "image"
              else towers.text_blocks(tiny_clip))
    _randomise_b(lora)

    def run(weights):
        if tower == "image":
            return towers.encode_image(tiny_clip.visual, images, (), block_weights=weights)
        text = towers.text_tower(tiny_clip)
        return towers.text_hidden(text, text.token_embedding(tokens), block_weights=weights)

    assert all(towers.blocks.takes_low_rank_path(b) for b in blocks)
    results = []
    for weights in ([lora_weights(b, d) for b, d in zip(blocks, lora())],
                    [towers.LowRank(f) for f in lora.factors()]):
        lora.zero_grad()
        out = run(weights)
        (out * torch.linspace(-1, 1, out.shape[-1])).sum().backward()
        results.append((out.detach(), *(p.grad.clone() for p in lora.parameters())))
    (merged, *merged_grads), (low_rank, *low_rank_grads) = results
    torch.testing.assert_close(low_rank, merged, atol=1e-5, rtol=1e-5)
    for g, expected in zip(low_rank_grads, merged_grads):
        largest = float(expected.abs().max())
        assert largest > 0  # float32 rounding of sums grows with the gradients' scale
        torch.testing.assert_close(g, expected, atol=max(1e-5, 1e-6 * largest),
                                   rtol=1e-4)
    assert isinstance(towers.LoRAWeights()(lora, blocks)[0], towers.LowRank)  # grad on: taken


def test_lora_on_the_mlp_starts_frozen_trains_and_round_trips(tiny_clip, batch, tmp_path):
    """mlp_in / mlp_out: factors shaped to the MLP's (64 -> 256 -> 64) layers, the frozen CLIP
    at the start, moved by training, and the prompt file loads them back exactly."""
    images, tokens = batch
    model = DualPromptCLIP(tiny_clip, LORA_ALL)
    lora = model.text_lora
    assert lora.mlp_in_a.shape == (3, 2, 64) and lora.mlp_in_b.shape == (3, 256, 2)
    assert lora.mlp_out_a.shape == (3, 2, 256) and lora.mlp_out_b.shape == (3, 64, 2)
    # per tower, 3 layers x (4 attention targets x (2 x 64 + 64 x 2) + 2 x (2 x 64 + 256 x 2))
    assert model.num_trainable_parameters() == 2 * 3 * (4 * 256 + 2 * 640)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_text(tokens), tiny_clip.encode_text(tokens),
                                   atol=1e-5, rtol=0)
    _two_steps(model, lambda: -(model.encode_image(images, normalize=True)
                                * model.encode_text(tokens, normalize=True)).sum())
    assert lora.mlp_out_b.abs().max() > 0 and model.image_lora.mlp_in_b.abs().max() > 0
    with torch.no_grad():
        loaded = load_prompts(model.save_prompts(tmp_path / "mlp.safetensors"), make_tiny_clip())
        assert loaded.config.lora_targets == LORA_ALL.lora_targets
        torch.testing.assert_close(loaded.encode_text(tokens), model.encode_text(tokens),
                                   atol=0, rtol=0)
        torch.testing.assert_close(loaded.encode_image(images), model.encode_image(images),
                                   atol=0, rtol=0)


def test_merged_mlp_weights_are_made_again_when_the_frozen_mlp_changes(tiny_clip, batch):
    images, _ = batch
    model = DualPromptCLIP(tiny_clip, LORA_ALL)
    merges = []
    model.image_lora.register_forward_hook(lambda *_: merges.append(1))
    _randomise_b(model.image_lora)
    with torch.no_grad():
        first = model.encode_image(images)
        model.encode_image(images)
        assert len(merges) == 1
        tiny_clip.visual.transformer.resblocks[0].mlp.c_fc.weight.mul_(0.5)
        moved = model.encode_image(images)
    assert len(merges) == 2 and (moved - first).abs().max() > 1e-4


def test_lora_on_a_gated_mlp_is_refused_by_name():
    from timm.layers import SwiGLU
    block = torch.nn.Module()
    block.mlp = SwiGLU(8, 16)
    with pytest.raises(NotImplementedError, match="SwiGLU.*mlp_in / mlp_out"):
        towers.mlp_width(block)


def test_lora_dropout_drops_the_update_inputs_while_training_only(tiny_clip, batch):
    """CLIP-LoRA's dropout acts on the low-rank path's inputs in training mode (outputs move
    with the seeded mask, gradients reach the factors), never on the frozen projections (with
    B = 0 the output stays the frozen CLIP's); none in eval mode."""
    images, _ = batch
    plain = DualPromptCLIP(tiny_clip, LORA)
    with torch.no_grad():
        plain.image_lora.b.normal_(std=0.05)
    dropped = DualPromptCLIP(tiny_clip, dataclasses.replace(LORA, lora_dropout=0.5))
    dropped.load_state_dict(plain.state_dict())
    plain.train(), dropped.train()
    reference = plain.encode_image(images)
    torch.manual_seed(0)
    first = dropped.encode_image(images)
    torch.manual_seed(0)
    torch.testing.assert_close(dropped.encode_image(images), first, atol=0, rtol=0)  # seeded
    second = dropped.encode_image(images)
    assert not torch.allclose(first, reference) and not torch.allclose(first, second)
    first.sum().backward()
    assert dropped.image_lora.a.grad.abs().max() > 0 and dropped.image_lora.b.grad.abs().max() > 0
    start = DualPromptCLIP(tiny_clip, dataclasses.replace(LORA, lora_dropout=0.5)).train()
    torch.testing.assert_close(start.encode_image(images), tiny_clip.encode_image(images))
    plain.eval(), dropped.eval()
    torch.testing.assert_close(dropped.encode_image(images), plain.encode_image(images),
                               atol=0, rtol=0)


def test_lora_on_one_tower_leaves_the_other_frozen(tiny_clip, batch, tmp_path):
    images, tokens = batch
    model = DualPromptCLIP(tiny_clip, PromptConfig(
        attribute_length=0, subcategory_length=0, visual_length=0, lora_rank=2,
        lora_towers=["image"]))
    assert model.text_lora is None and model.image_lora is not None
    assert model.num_trainable_parameters() == 3 * 3 * (2 * 64 + 64 * 2)  # image q, k, v
    _two_steps(model, lambda: -(model.encode_image(images, normalize=True)
                                * tiny_clip.encode_text(tokens, normalize=True)).sum())
    with torch.no_grad():
        assert (model.encode_image(images) - tiny_clip.encode_image(images)).abs().max() > 1e-3
        torch.testing.assert_close(model.encode_text(tokens), tiny_clip.encode_text(tokens),
                                   atol=1e-5, rtol=0)
        loaded = load_prompts(model.save_prompts(tmp_path / "image_lora.safetensors"),
                              make_tiny_clip())
        assert loaded.config.lora_towers == ["image"] and loaded.text_lora is None
        torch.testing.assert_close(loaded.encode_image(images), model.encode_image(images),
                                   atol=0, rtol=0)


@pytest.mark.parametrize("fields, message", [
    ({"lora_rank": -1}, "lora_rank"),
    ({"lora_rank": 2, "lora_targets": ["q", "x"]}, "lora_targets"),
    ({"lora_rank": 2, "lora_targets": []}, "lora_targets"),
    ({"lora_rank": 2, "lora_towers": ["vision"]}, "lora_towers"),
    ({"lora_rank": 2, "lora_towers": []}, "lora_towers"),
    ({"lora_rank": 2, "lora_dropout": -0.1}, "lora_dropout"),
    ({"lora_rank": 2, "lora_dropout": 1.0}, "lora_dropout")])
def test_lora_fields_are_validated(fields, message):
    with pytest.raises(ValueError, match=message):
        PromptConfig(**fields)


def test_feature_consistency_by_hand():
    a = F.normalize(torch.tensor([[1.0, 0.0], [1.0, 1.0]]), dim=-1)
    b = F.normalize(torch.tensor([[0.0, 1.0], [1.0, 1.0]]), dim=-1)
    assert feature_consistency(a, b, "cosine").item() == pytest.approx(1 - (0 + 1) / 2)
    assert feature_consistency(a, b, "l1").item() == pytest.approx((a - b).abs().mean().item())
    assert feature_consistency(a, a, "cosine").item() == pytest.approx(0, abs=1e-6)
    learned = a.clone().requires_grad_(True)
    frozen = b.clone().requires_grad_(True)
    feature_consistency(learned, frozen, "l1").backward()
    assert learned.grad is not None and frozen.grad is None  # the frozen side is a target
    with pytest.raises(ValueError, match="cosine or l1"):
        feature_consistency(a, b, "l2")


def test_logit_consistency_is_the_kl_to_the_frozen_logits():
    logits, frozen = torch.tensor([[2.0, 0.0, 1.0]]), torch.tensor([[0.0, 1.0, 0.0]])
    p, q = frozen.softmax(1), logits.softmax(1)
    expected = (p * (p.log() - q.log())).sum() / logits.numel()
    assert logit_consistency(logits, frozen).item() == pytest.approx(expected.item(), rel=1e-6)
    assert logit_consistency(frozen, frozen).item() == pytest.approx(0, abs=1e-7)


def test_gaussian_prompt_aggregation_averages_the_epochs_by_their_weights(tiny_clip, tmp_path):
    """PromptSRC's weights (epochs from 1, a Gaussian at mean * epochs), and the exported
    prompt file holds the weighted mean of the end-of-epoch tensors."""
    model = DualPromptCLIP(tiny_clip, PromptConfig(attribute_length=2, subcategory_length=0,
                                                   visual_length=0, attribute_init=None))
    gpa = GaussianPromptAggregation(tmp_path / "p.safetensors", mean=0.75, std=0.25,
                                    max_epochs=4, save=lambda m, path: m.save_prompts(path))
    density = [math.exp(-0.5 * ((e / 4 - 0.75) / 0.25) ** 2) for e in (1, 2, 3, 4)]
    assert gpa.weights == pytest.approx([d / sum(density) for d in density])
    module = SimpleNamespace(model=model)  # what the callback reads of the LightningModule
    for epoch in range(4):
        with torch.no_grad():
            model.attribute.vectors.fill_(float(epoch))
        gpa.on_train_epoch_end(SimpleNamespace(current_epoch=epoch), module)
    gpa.on_fit_end(SimpleNamespace(current_epoch=4, is_global_zero=True), module)
    expected = sum(w * e for w, e in zip(gpa.weights, range(4)))
    loaded = load_prompts(tmp_path / "p.safetensors", make_tiny_clip())
    torch.testing.assert_close(loaded.attribute.vectors,
                               torch.full_like(loaded.attribute.vectors, expected))


def test_the_consistency_terms_frozen_caption_features_are_open_clips(tiny_clip, batch):
    """KgCoOp / PromptSRC compare with the frozen features on a trimmed window: the same."""
    from dualprompt.training.module import _plain_text_features
    _, tokens = batch
    with torch.no_grad():
        torch.testing.assert_close(_plain_text_features(tiny_clip, tokens),
                                   tiny_clip.encode_text(tokens), atol=1e-5, rtol=0)


@pytest.mark.parametrize("scale", [1.0, 3.0])
def test_lora_trains_at_its_own_lr_on_the_prompts_schedule(tiny_clip, scale):
    model = DualPromptCLIP(tiny_clip, PromptConfig(attribute_length=2, subcategory_length=0,
                                                   visual_length=2, lora_rank=2))
    module = PromptRetrievalModule(model, optim=OptimConfig(
        name=Optimizer.adamw, lr=3e-3, lora_lr_scale=scale, warmup_steps=2, warmup_lr=1e-5))
    module.trainer = L.Trainer(max_steps=10, logger=False, enable_checkpointing=False,
                               enable_progress_bar=False, enable_model_summary=False)
    setup = module.configure_optimizers()
    opt, scheduler = setup["optimizer"], setup["lr_scheduler"]["scheduler"]
    lora = {id(p) for m in (model.text_lora, model.image_lora) for p in m.parameters()}
    groups = opt.param_groups
    trained = [p for g in groups for p in g["params"]]
    assert sorted(map(id, trained)) == sorted(
        id(p) for p in model.parameters() if p.requires_grad)  # each trainable tensor once
    if scale == 1.0:
        assert len(groups) == 1 and groups[0]["lr"] == pytest.approx(1e-5)
        return
    assert [{id(p) in lora for p in g["params"]} for g in groups] == [{False}, {True}]
    for _ in range(6):  # warm-up, then cosine: the same factor on both groups
        assert groups[1]["lr"] / groups[0]["lr"] == pytest.approx(scale)
        opt.step()
        scheduler.step()
    assert groups[0]["lr"] < 3e-3 and groups[1]["lr"] < 9e-3


def test_lora_lr_scale_must_be_positive(tiny_clip):
    model = DualPromptCLIP(tiny_clip, PromptConfig(visual_length=0, lora_rank=2))
    module = PromptRetrievalModule(model, optim=OptimConfig(lora_lr_scale=0.0))
    module.trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False)
    with pytest.raises(ValueError, match="optim.lora_lr_scale"):
        module.configure_optimizers()
