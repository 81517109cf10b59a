"""The speed savings are exact: length buckets, a shared frozen text pass and the cached
blank image change no feature, weight or loss beyond float tolerance."""
from __future__ import annotations

import warnings

import pytest
import torch

from dualprompt import DualPromptCLIP, PromptConfig, token_weights
from dualprompt.reweighting import blank_image_features, frozen_token_features
from dualprompt.tokens import length_groups
from dualprompt.data.datasets import GalleryBatch, TrainBatch
from dualprompt.training.module import PromptRetrievalModule
from dualprompt.training.schema import LossConfig

CAPTIONS = ["a cat", "This is a photo of a Bengal cat.A striped cat lies on a red sofa by the "
            "window in the afternoon sun.", "two dogs", "a red striped triangle on a blue disc",
            "an aircraft", "a small brown bird with a long beak sits on a branch"]


@pytest.fixture
def text(tokenizer):
    return tokenizer(CAPTIONS)


def _model(clip, **kwargs):
    torch.manual_seed(0)
    config = PromptConfig(attribute_length=2, subcategory_length=2, visual_length=2,
                          text_depth=2, attribute_init=None)
    model = DualPromptCLIP(clip, config, **kwargs)
    with torch.no_grad():  # non-trivial prompts
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.5 * torch.randn_like(p))
    return model


def test_length_groups_cover_every_row_once_by_length():
    eot = torch.tensor([5, 30, 3, 12, 7, 40, 9])
    groups = length_groups(eot, 3)
    assert len(groups) == 3 and sorted(len(g) for g in groups) == [2, 2, 3]
    assert torch.equal(torch.cat(groups).sort().values, torch.arange(7))
    assert torch.equal(eot[torch.cat(groups)], eot.sort().values)
    assert len(length_groups(eot[:2], 4)) == 2


@pytest.mark.parametrize("buckets", [2, 3, 6])
def test_length_buckets_change_no_feature_or_gradient(tiny_clip, text, buckets):
    weights = 0.5 + torch.rand(text.shape)
    out = {}
    for name, kwargs in {"full": dict(trim_context=False, length_buckets=1),
                         "buckets": dict(length_buckets=buckets)}.items():
        model = _model(tiny_clip, **kwargs)
        features = model.encode_text(text, normalize=True, token_weights=weights)
        features.pow(2).sum(-1).mul(torch.arange(len(text))).sum().backward()
        out[name] = features.detach(), {n: p.grad for n, p in model.named_parameters()
                                        if p.grad is not None}
    torch.testing.assert_close(out["buckets"][0], out["full"][0], atol=1e-5, rtol=1e-4)
    for name, grad in out["full"][1].items():
        torch.testing.assert_close(out["buckets"][1][name], grad, atol=1e-5, rtol=1e-4)


def test_shared_frozen_text_gives_the_same_query_and_weights(tiny_clip, text):
    model = _model(tiny_clip)
    shared = frozen_token_features(tiny_clip, text)
    torch.testing.assert_close(model.text_query(text, shared), model.text_query(text),
                               atol=1e-5, rtol=1e-4)
    images = torch.randn(len(text), 3, 32, 32)
    plain = token_weights(tiny_clip, text, images)
    reused = token_weights(tiny_clip, text, images, token_features=shared,
                           blank_features=blank_image_features(tiny_clip))
    torch.testing.assert_close(reused, plain, atol=1e-5, rtol=1e-4)


def test_shared_query_falls_back_when_prompts_cut_a_caption(tiny_clip, tokenizer):
    text = tokenizer(["word " * 74, "a cat"])  # 76 tokens: cut to make room for 4 prompts
    model = _model(tiny_clip)
    shared = frozen_token_features(tiny_clip, text)
    torch.testing.assert_close(model.text_query(text, shared), model.text_query(text))
    assert not torch.allclose(model.text_query(text, shared)[0], shared[0, 75])


def _batch(text, k=2):
    torch.manual_seed(4)
    b = text.shape[0]
    return TrainBatch(image=torch.randn(b, 3, 32, 32), tokens=text,
                      negative_tokens=text[torch.randperm(b)][:, None].repeat(1, k, 1),
                      negative_mask=torch.rand(b, k) > 0.2,
                      negative_categories=torch.randint(0, 3, (b, k)),
                      category=torch.randint(0, 3, (b,)), index=torch.arange(b),
                      caption=torch.zeros(b, dtype=torch.long))


@pytest.mark.parametrize("reweight_negatives", [False, True])
def test_training_step_loss_and_gradients_unchanged_by_every_saving(tiny_clip, text,
                                                                    monkeypatch,
                                                                    reweight_negatives):
    import dualprompt.training.module as module_file
    batch = _batch(text)
    out = {}
    for name, model_kwargs, module_kwargs in [
            ("reference", dict(trim_context=False, length_buckets=1),
             dict(share_frozen_text=False, cache_blank_image=False, cache_frozen=False)),
            ("optimised", {}, {})]:
        loss_cfg = LossConfig(text_consistency=25.0, image_consistency=10.0,  # the default's
                              logit_consistency=1.0, consistency_distance="l1",
                              reweight_negatives=reweight_negatives)
        module = PromptRetrievalModule(_model(tiny_clip, **model_kwargs), loss=loss_cfg,
                                       **module_kwargs)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            loss = module.training_step(batch, 0)
            loss.backward()
            if name == "optimised":  # the second step reads the cache: no frozen text pass
                assert len(module._frozen_cache) == len(text)
                negatives = (module._negative_frozen if reweight_negatives
                             else module._negative_queries)
                assert len(negatives) == int(batch.negative_mask.sum())
                assert len(module._consistency_cache) == len(text)

                def no_frozen_pass(*args, **kwargs):
                    raise AssertionError("the frozen text pass ran again")
                monkeypatch.setattr(module_file, "frozen_token_features", no_frozen_pass)
                # nor the consistency terms' frozen caption features
                monkeypatch.setattr(module_file, "_plain_text_features", no_frozen_pass)
                # nor the negatives' pool queries
                monkeypatch.setattr(module.model, "subcategory_query", no_frozen_pass)
            again = module.training_step(batch, 0)  # blank image, weights and queries reused
            monkeypatch.undo()
        out[name] = loss.detach(), again.detach(), {
            n: p.grad for n, p in module.named_parameters() if p.grad is not None}
    torch.testing.assert_close(out["optimised"][0], out["reference"][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out["optimised"][1], out["reference"][1], atol=1e-5, rtol=1e-5)
    assert out["reference"][2].keys() == out["optimised"][2].keys()
    for name, grad in out["reference"][2].items():
        torch.testing.assert_close(out["optimised"][2][name], grad, atol=1e-5, rtol=1e-4)


def test_reweighted_negatives_encode_the_positive_once_and_weigh_each_by_its_image(
        tiny_clip, text, monkeypatch):
    """`reweight_negatives`: one text pass with gradients over the positives (their weighted
    features serve both losses) and one over the negatives, each weighted against its own
    image; the other form re-encodes the positives unweighted beside the negatives."""
    batch = _batch(text)
    n_negatives = int(batch.negative_mask.sum())
    for reweight, expected_rows in [(True, [len(text), n_negatives]),
                                    (False, [len(text), len(text) + n_negatives])]:
        module = PromptRetrievalModule(_model(tiny_clip), loss=LossConfig(
            reweight_negatives=reweight, reweighting_strength=0.5))
        encode, calls = module.model.encode_text, []

        def counted(tokens, *args, **kwargs):
            calls.append((tokens, kwargs.get("token_weights")))
            return encode(tokens, *args, **kwargs)
        monkeypatch.setattr(module.model, "encode_text", counted)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module.training_step(batch, 0)
        monkeypatch.undo()
        assert [len(tokens) for tokens, _ in calls] == expected_rows
        negative_weights = calls[1][1]
        if not reweight:
            assert negative_weights is None
            continue
        rows = batch.negative_mask.nonzero(as_tuple=True)[0]
        expected = token_weights(tiny_clip, batch.negative_tokens[batch.negative_mask],
                                 batch.image[rows], strength=0.5)
        torch.testing.assert_close(negative_weights, expected, atol=1e-5, rtol=1e-4)
        assert not torch.allclose(negative_weights, torch.ones_like(negative_weights))


def test_validation_keeps_each_captions_pool_query(tiny_clip, text, monkeypatch):
    """Validation epochs after the first read each caption's pool query from the cache: no
    frozen text pass, the same text features; nothing is kept while the CLIP trains."""
    batch = GalleryBatch(image=torch.randn(3, 3, 32, 32), image_ids=torch.arange(3),
                         tokens=text, text_ids=torch.arange(len(text)) + 10,
                         text_image_ids=torch.arange(len(text)) % 3)
    module = PromptRetrievalModule(_model(tiny_clip), val_domains=["a", "b"])
    module.validation_step(batch, 0)
    assert len(module._val_queries) == len(text)

    def no_frozen_pass(*args, **kwargs):
        raise AssertionError("the frozen text pass ran again")
    monkeypatch.setattr(module.model, "subcategory_query", no_frozen_pass)
    module.validation_step(batch, 0)  # the second epoch
    cached = module.model.encode_text(text, normalize=True,
                                      query=module._validation_query(batch, 0))
    monkeypatch.undo()
    torch.testing.assert_close(cached, module.model.encode_text(text, normalize=True),
                               atol=1e-5, rtol=1e-4)
    module.validation_step(batch, 0, 1)  # another loader's captions are its own
    assert len(module._val_queries) == 2 * len(text)

    tiny_clip.requires_grad_(True)  # full fine-tuning: the query changes every step
    assert module._validation_query(batch, 0) is None
