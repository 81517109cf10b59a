"""The perf benchmark's building blocks on a tiny model: the equalities it relies on (never
timings). benchmarks/perf/run.py runs the same blocks on ViT-B-32."""
from __future__ import annotations

import dataclasses
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import SHARED, make_tiny_clip

PERF = Path(__file__).resolve().parents[1] / "benchmarks" / "perf"


def _load(name: str):
    if str(PERF) not in sys.path:
        sys.path.insert(0, str(PERF))  # run.py's own imports: workload, retrieval, report
    spec = importlib.util.spec_from_file_location(f"perf_{name}", PERF / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def wl():
    return _load("workload")


@pytest.fixture(scope="module")
def retrieval():
    return _load("retrieval")


@pytest.mark.parametrize("source", ["fdrd", "synthetic"])
def test_captions_have_fdrd_lengths(wl, source):
    root = SHARED / "fdrd" / "captions" if source == "fdrd" else None
    if source == "fdrd" and not root.is_dir():
        pytest.skip("no ../shared/fdrd")
    captions = wl.sample_captions(6, root, seed=1)
    assert captions.source == source
    assert captions.positive.shape == (6, 77) and captions.negative.shape == (6, 4, 77)
    lengths = torch.cat([captions.positive[:, None], captions.negative], 1).argmax(-1) + 1
    assert (captions.positive[:, 0] == wl.SOT).all() and lengths.min() >= 10
    assert 20 < captions.stats["population"]["mean"] < 45  # FDRD: ~31 tokens, not 77


def test_reference_and_optimised_steps_give_the_same_loss(wl, tiny_config_file):
    clip = make_tiny_clip()
    captions = wl.sample_captions(4, None, seed=2)
    prompt, loss, negatives = wl.default_method()
    batch = wl.make_batch(captions, clip.visual.image_size, negatives=negatives)
    assert batch.negative_tokens.shape[1] == negatives < captions.negative.shape[1]
    modules = {name: wl.prompt_module(clip, opt) for name, opt in wl.PROMPT_VARIANTS.items()}
    for module in modules.values():  # the step timed is the default method's
        config = module.model.config  # its depths resolved from the fractions on this tower
        assert module.loss_cfg == loss and config.text_depth == 3 == config.visual_depth
        assert dataclasses.replace(config, text_depth=1, visual_depth=1, text_depth_fraction=0.75,
                                   visual_depth_fraction=0.75) == prompt
    assert prompt.image_adapter_ratio > 0 and module.model.image_adapter is not None
    losses = {name: wl.prompt_loss(module, batch).item() for name, module in modules.items()}
    assert all(all(wl.supported(opt).values()) for opt in wl.PROMPT_VARIANTS.values())
    reference = losses["reference prompt step"]
    for name, loss in losses.items():
        assert loss == pytest.approx(reference, rel=1e-5), name
    module = wl.prompt_module(clip, wl.Optimisations())
    assert wl.prompt_step(module, wl.prompt_optimizer(module), batch) == pytest.approx(reference,
                                                                                      rel=1e-5)


def test_finetune_step_trains_every_weight_and_frozen_forward_none(wl, tiny_config_file):
    clip = make_tiny_clip().requires_grad_(False)  # as DualPromptCLIP leaves it
    batch = wl.make_batch(wl.sample_captions(4, None), clip.visual.image_size)
    model = wl.finetune_model(clip)
    before = model.token_embedding.weight.detach().clone()
    wl.finetune_step(model, wl.finetune_optimizer(model), batch)
    assert not torch.equal(model.token_embedding.weight, before)
    assert not any(p.requires_grad for p in clip.parameters())  # the copy trained, not clip
    assert torch.isfinite(wl.frozen_forward(clip, batch))


@pytest.mark.parametrize("chunk", [None, 7])
def test_recall_at_k_equals_torchmetrics_hit_rate(retrieval, chunk):
    image, text, text_to_image = retrieval.random_embeddings(40, per_image=5, dim=16,
                                                             noise=2.0)
    ours = retrieval.recall_dualprompt(image, text, text_to_image)
    theirs = retrieval.recall_torchmetrics(image, text, text_to_image, query_chunk=chunk)
    assert 0 < ours["t2i_R@1"] < 100 and 0 < ours["i2t_R@1"] < 100  # not a trivial case
    assert retrieval.hit_count_difference(ours, theirs, 40, 200) == 0
    assert retrieval.hit_count_difference(ours, {**theirs, "t2i_R@1": theirs["t2i_R@1"] - 0.5}, 40, 200) == 1
