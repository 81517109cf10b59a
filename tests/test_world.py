"""Contract tests of the procedural world: determinism, FDRD layout, caching, open_clip loading."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from dualprompt.world import pretrain
from dualprompt.world.pixels import images_to_tensor
from dualprompt.world.captions import fill, positive_caption
from dualprompt.world.corpus import PretrainStream, WorldConfig, build_world, make_domains, pretrain_token_ids
from dualprompt.world.pretrain import PretrainConfig, TinyClipConfig, ensure_pretrained_clip
from dualprompt.world.render import render
from dualprompt.world.spec import DOMAINS, ObjectSpec, RenderStyle

SMALL_WORLD = WorldConfig(domains=("critters", "craft"), train_per_domain=12, val_per_domain=6, test_per_domain=6)
TINY_MODEL = TinyClipConfig(embed_dim=16, vision_width=32, vision_layers=1, vision_head_width=16,
                            text_width=32, text_heads=2, text_layers=1)
TINY_RUN = PretrainConfig(model=TINY_MODEL, steps=20, batch_size=8, warmup_steps=2, eval_pairs=16,
                          probe_images=40, log_every=10)


def _tree(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_render_is_deterministic_and_sized():
    obj = ObjectSpec("star", "red", "dark", "striped", "large", "left", "sand")
    style = RenderStyle(noise_std=8, texture=20, gradient=30, blur=0.5)
    a = render(obj, style, np.random.default_rng(7))
    b = render(obj, style, np.random.default_rng(7))
    c = render(obj, style, np.random.default_rng(8))
    assert a.size == (64, 64) and a.mode == "RGB"
    assert a.tobytes() == b.tobytes()
    assert a.tobytes() != c.tobytes()


def test_object_spec_rejects_unknown_values():
    with pytest.raises(ValueError):
        ObjectSpec("blob", "red", "dark", "striped", "large", "left", "sand")


def test_fill_drops_unmentioned_nested_groups():
    template = "a [color:its color is [shade:{shade}] {color} .] [size:{size}] {shape}"
    values = {"color": "red", "shade": "dark", "size": "small", "shape": "star"}
    assert fill(template, values, {}) == "a its color is dark red. small star"
    assert fill(template, values, {"shade": False}) == "a its color is red. small star"
    assert fill(template, values, {"color": False, "size": False}) == "a star"


def test_pretrain_stream_is_deterministic_and_generic():
    images, captions, objects = PretrainStream(3).batch(6)
    images2, captions2, _ = PretrainStream(3).batch(6)
    assert images.shape == (6, 64, 64, 3) and images.dtype == np.uint8
    assert np.array_equal(images, images2) and captions == captions2
    # Class names never share a token with anything the pretraining corpus can say.
    from open_clip import get_tokenizer

    tokenizer = get_tokenizer("ViT-B-32")
    banned = pretrain_token_ids()
    assert {i for c in captions for i in tokenizer.encode(c)} <= banned
    for domain in make_domains(WorldConfig()):
        for fine in domain.classes:
            assert not set(tokenizer.encode(fine.name)) & banned, fine.name


def test_domains_have_families_of_siblings_and_unique_names():
    domains = make_domains(WorldConfig())
    assert [d.name for d in domains] == [d.name for d in DOMAINS]
    names = [c.name for d in domains for c in d.classes]
    assert len(names) == len(set(names))
    for domain in domains:
        for fine in domain.classes:
            siblings = domain.siblings(fine)
            assert len(siblings) == 3 and all(s.shape == fine.shape for s in siblings)
            # a sibling differs from the class by color or by pattern, never by nothing
            assert all((s.color, s.pattern) != (fine.color, fine.pattern) for s in siblings)


def test_build_world_writes_fdrd_layout(tmp_path):
    root = build_world(tmp_path / "w", SMALL_WORLD)
    for name in SMALL_WORLD.domains:
        domain = root / name
        classes = json.loads((domain / "classes.json").read_text())
        attributes = json.loads((domain / "attributes.json").read_text())
        for split in ("train", "val", "test"):
            records = json.loads((domain / f"{split}.json").read_text())
            assert len(records) == SMALL_WORLD.split_size(split)
            for key, record in records.items():
                assert set(record) == {"file_name", "class_name", "file_path", "positive", "negative"}
                assert (domain / record["file_path"]).is_file()
                assert record["file_name"] == f"{key}.png" and record["class_name"] in classes
                prefix = f"This is a photo of {record['class_name']}."
                assert record["positive"].startswith(prefix)
                description = record["positive"][len(prefix):]
                negatives = record["negative"]
                assert len(negatives) == 4 and len(set(negatives)) == 4
                swapped = [n[len("This is a photo of "):-len(description) - 1] for n in negatives]
                assert all(n == positive_caption(s, description) for n, s in zip(negatives, swapped))
                assert record["class_name"] not in swapped and set(swapped) <= set(classes)
                same_meta = sum(classes[s] == classes[record["class_name"]] for s in swapped)
                assert same_meta == 3  # all three siblings, then one other family
                assert attributes[key]["class_name"] == record["class_name"] and attributes[key]["split"] == split


def test_build_world_is_deterministic_and_idempotent(tmp_path):
    a = build_world(tmp_path / "a", SMALL_WORLD)
    b = build_world(tmp_path / "b", SMALL_WORLD)
    assert _tree(a) == _tree(b)
    stamp = (a / "critters" / "train.json").stat().st_mtime_ns
    build_world(a, SMALL_WORLD)  # same parameters: nothing is rewritten
    assert (a / "critters" / "train.json").stat().st_mtime_ns == stamp
    build_world(a, replace(SMALL_WORLD, val_per_domain=5))  # new parameters: rebuilt
    assert len(json.loads((a / "critters" / "val.json").read_text())) == 5


def test_encode_text_trimmed_matches_open_clip():
    import open_clip

    torch.manual_seed(0)
    model = open_clip.CLIP(**TINY_MODEL.model_cfg()).eval()
    tokens = open_clip.get_tokenizer("ViT-B-32")(["a red star", "a small dark blue striped circle on the left"])
    with torch.no_grad():
        assert torch.allclose(pretrain.encode_text_trimmed(model, tokens), model.encode_text(tokens), atol=1e-5)


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("clip")
    pretrain.pretrain_clip(out, TINY_RUN)
    return out


def test_reduced_pretraining_writes_metrics(tiny_clip_dir):
    metrics = json.loads((tiny_clip_dir / pretrain.METRICS_FILE).read_text())
    assert metrics["steps"] == 20 and len(metrics["loss_curve_per_50_steps"]) == 1
    assert set(metrics["heldout"]) >= {"image_to_text_r1", "text_to_image_r1"}
    assert set(metrics["probes"]) == {"shape", "color", "shade", "pattern", "size", "position", "background"}


def test_pretrained_folder_loads_through_both_open_clip_paths(tiny_clip_dir):
    import open_clip
    from safetensors.torch import load_file

    saved = load_file(str(tiny_clip_dir / pretrain.WEIGHTS_FILE))
    by_dir, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{tiny_clip_dir}")
    open_clip.add_model_config(tiny_clip_dir / f"{pretrain.MODEL_NAME}.json")
    by_name, _, _ = open_clip.create_model_and_transforms(
        pretrain.MODEL_NAME, pretrained=str(tiny_clip_dir / pretrain.WEIGHTS_FILE))
    for model in (by_dir, by_name):
        state = model.state_dict()
        assert set(state) == set(saved)
        assert all(torch.equal(state[k], saved[k]) for k in saved)
    # The val transform of the loaded model equals the tensors pretraining fed the model.
    images, _, _ = PretrainStream(1).batch(2)
    from PIL import Image

    expected = images_to_tensor(images)
    got = torch.stack([preprocess(Image.fromarray(im)) for im in images])
    assert torch.allclose(got, expected, atol=1e-6)


def test_ensure_pretrained_clip_uses_the_cache(tiny_clip_dir, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("should not retrain")

    monkeypatch.setattr(pretrain, "pretrain_clip", fail)
    assert ensure_pretrained_clip(tiny_clip_dir, TINY_RUN) == tiny_clip_dir
    assert not pretrain.is_cached(tiny_clip_dir, replace(TINY_RUN, steps=21))


def test_thread_tuner_keeps_the_faster_count_and_retries_when_load_changes():
    tuner = pretrain.ThreadTuner(max_threads=2, period=50, trial=2)
    cost = {1: 1.0, 2: 3.0}  # a busy machine: one thread is faster
    seen = []
    for _ in range(20):
        threads = tuner.next_threads()
        seen.append(threads)
        tuner.record(threads, cost[threads])
    assert seen[:5] == [2, 1, 1, 2, 2] and set(seen[5:]) == {1}
    cost = {1: 2.0, 2: 0.5}  # the load went away: steps slow down at 1 thread, a new trial picks 2
    for _ in range(40):
        threads = tuner.next_threads()
        tuner.record(threads, cost[threads])
    assert tuner.next_threads() == 2
    single = pretrain.ThreadTuner(max_threads=1)
    single.record(single.next_threads(), 1.0)
    assert single.next_threads() == 1 and single.plan == []
