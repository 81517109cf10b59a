"""Contract tests for dualprompt.metrics and the RetrievalRecall torchmetrics wrapper (CPU)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from dualprompt.metrics import recall_at_k, retrieval_metrics, retrieval_ranks, summarize_domains
from dualprompt.training.retrieval_metric import RetrievalRecall

REPO_ROOT = Path(__file__).resolve().parents[1]


def reference_ranks(image_features, text_features, text_to_image):
    """Brute force: full score matrix, stable argsort on descending score, position of the GT."""
    scores = image_features.double() @ text_features.double().T  # (N, M)
    i2t = []
    for i in range(scores.shape[0]):
        order = torch.argsort(-scores[i], stable=True).tolist()
        i2t.append(min(order.index(c) for c in range(scores.shape[1]) if text_to_image[c] == i))
    t2i = []
    for c in range(scores.shape[1]):
        order = torch.argsort(-scores[:, c], stable=True).tolist()
        t2i.append(order.index(int(text_to_image[c])))
    return torch.tensor(i2t), torch.tensor(t2i)


def random_gallery(num_images=13, dim=8, seed=0):
    """Small-integer features: every dot product is exact in float32, and ties are frequent."""
    g = torch.Generator().manual_seed(seed)
    captions_per_image = torch.randint(1, 6, (num_images,), generator=g)  # 1..5 per image
    text_to_image = torch.repeat_interleave(torch.arange(num_images), captions_per_image)
    text_to_image = text_to_image[torch.randperm(len(text_to_image), generator=g)]  # interleaved
    image_features = torch.randint(-2, 3, (num_images, dim), generator=g).float()
    text_features = torch.randint(-2, 3, (len(text_to_image), dim), generator=g).float()
    return image_features, text_features, text_to_image


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ranks_match_brute_force(seed):
    image_features, text_features, text_to_image = random_gallery(seed=seed)
    expected_i2t, expected_t2i = reference_ranks(image_features, text_features, text_to_image)
    num_images, num_texts = len(image_features), len(text_features)
    for chunk_size in (1, 5, num_images, num_texts, 1000):  # below, equal to, above N and M
        i2t, t2i = retrieval_ranks(image_features, text_features, text_to_image, chunk_size)
        assert torch.equal(i2t, expected_i2t), chunk_size
        assert torch.equal(t2i, expected_t2i), chunk_size


def test_low_precision_inputs_scored_in_float32():
    image_features, text_features, text_to_image = random_gallery(seed=3)
    expected = retrieval_ranks(image_features, text_features, text_to_image)
    for dtype in (torch.float16, torch.bfloat16):
        got = retrieval_ranks(image_features.to(dtype), text_features.to(dtype), text_to_image)
        assert all(torch.equal(a, b) for a, b in zip(got, expected))


def test_tie_between_identical_captions_is_broken_by_caption_index():
    # images 0 and 1 both score 0.5 with captions 0 and 1 (identical); image 2 has its own caption
    image_features = torch.eye(4)[:3]
    shared = torch.full((4,), 0.5)
    text_features = torch.stack([shared, shared, torch.eye(4)[2]])
    i2t, _ = retrieval_ranks(image_features, text_features, torch.tensor([0, 1, 2]))
    assert i2t.tolist() == [0, 1, 0]  # image 1's caption loses the tie to the lower index
    i2t, _ = retrieval_ranks(image_features, text_features, torch.tensor([1, 0, 2]))
    assert i2t.tolist() == [1, 0, 0]  # ownership swapped: now image 0 loses


def test_tie_between_identical_images_is_broken_by_image_index():
    e0, e2 = torch.eye(3)[0], torch.eye(3)[2]
    image_features = torch.stack([e0, e0, e2])  # images 0 and 1 identical
    text_features = torch.stack([e0, e0, e2])
    _, t2i = retrieval_ranks(image_features, text_features, torch.tensor([0, 1, 2]))
    assert t2i.tolist() == [0, 1, 0]
    _, t2i = retrieval_ranks(image_features, text_features, torch.tensor([1, 0, 2]))
    assert t2i.tolist() == [1, 0, 0]


def test_hand_worked_example():
    image_features = torch.eye(3)  # score(image i, caption c) = component i of caption c
    text_features = torch.tensor(
        [[0.6, 0.8, 0.0], [0.0, 0.6, 0.8], [0.8, 0.0, 0.6], [1.0, 0.0, 0.0]]
    )
    text_to_image = torch.tensor([0, 1, 2, 0])
    # image 0: its caption c3 (1.0) comes first; image 1: c0 (0.8) beats c1 (0.6); image 2: c1
    # beats c2. Caption c0: image 1 (0.8) beats image 0 (0.6); c1 and c2 likewise; c3: image 0.
    i2t, t2i = retrieval_ranks(image_features, text_features, text_to_image)
    assert i2t.tolist() == [0, 1, 1]
    assert t2i.tolist() == [1, 1, 1, 0]
    assert recall_at_k(i2t, ks=(1, 2)) == pytest.approx({1: 1 / 3, 2: 1.0})
    metrics = retrieval_metrics(image_features, text_features, text_to_image)
    expected = {"i2t_R@1": 100 / 3, "i2t_R@5": 100.0, "i2t_R@10": 100.0, "t2i_R@1": 25.0}
    expected |= {"t2i_R@5": 100.0, "t2i_R@10": 100.0, "rsum": 100 / 3 + 25 + 400}
    # 1-based ranks: i2t [1, 2, 2], t2i [2, 2, 2, 1]; medians are the lower middle value
    expected |= {"i2t_mean_rank": 5 / 3, "i2t_median_rank": 2.0, "t2i_mean_rank": 1.75,
                 "t2i_median_rank": 2.0}
    assert metrics == pytest.approx(expected)
    assert list(metrics) == list(expected)


def test_invalid_galleries_raise():
    image_features = torch.eye(3)
    with pytest.raises(ValueError, match="1 of 3 images have no caption"):
        retrieval_ranks(image_features, torch.eye(3)[:2], torch.tensor([0, 1]))
    for bad_index in (3, -1):
        with pytest.raises(ValueError, match="outside"):
            retrieval_ranks(image_features, torch.eye(3), torch.tensor([0, bad_index, 2]))


def test_retrieval_recall_is_independent_of_order_and_duplicates():
    g = torch.Generator().manual_seed(0)
    num_images, dim = 20, 16
    image_ids = torch.randperm(1000, generator=g)[:num_images] + 5000  # sparse, unordered ids
    image_features = torch.randn(num_images, dim, generator=g)
    counts = torch.randint(1, 4, (num_images,), generator=g)
    own_image = torch.repeat_interleave(torch.arange(num_images), counts)
    text_image_ids = image_ids[own_image]
    text_ids = torch.randperm(10_000, generator=g)[: len(own_image)]
    noise = 1.5 * torch.randn(len(own_image), dim, generator=g)
    text_features = image_features[own_image] + noise  # noisy matches: ranks spread out

    # reference: the same data sorted by id, no duplicates
    image_order, text_order = torch.argsort(image_ids), torch.argsort(text_ids)
    expected = retrieval_metrics(
        F.normalize(image_features[image_order], dim=-1),
        F.normalize(text_features[text_order], dim=-1),
        torch.searchsorted(image_ids[image_order], text_image_ids[text_order]),
    )
    assert 0 < expected["rsum"] < 600

    # two "ranks" fed shuffled, uneven batches; rank 1 re-sends a few items as sampler padding
    image_perm = torch.randperm(num_images, generator=g)
    text_perm = torch.randperm(len(text_ids), generator=g)
    shards = [
        (image_perm[:12], text_perm[:30]),
        (torch.cat([image_perm[12:], image_perm[:3]]), torch.cat([text_perm[30:], text_perm[:4]])),
    ]
    metrics = [RetrievalRecall(), RetrievalRecall()]
    for metric, (image_idx, text_idx) in zip(metrics, shards):
        for i, t in zip(image_idx.tensor_split(3), text_idx.tensor_split(3)):
            metric.update(
                image_features[i], image_ids[i], text_features[t], text_ids[t], text_image_ids[t]
            )
    metrics[1].merge_state(metrics[0])  # gathered "out of order": rank 0's state comes last
    assert metrics[1].compute() == pytest.approx(expected)

    # after a real DDP sync, each list state arrives as one concatenated tensor
    synced = RetrievalRecall()
    for name in ("image_features", "image_ids", "text_features", "text_ids", "text_image_ids"):
        setattr(synced, name, torch.cat(getattr(metrics[1], name)))
    synced._update_count = 1
    assert synced.compute() == pytest.approx(expected)


def test_retrieval_recall_rejects_inconsistent_ids():
    features, ids = torch.randn(2, 4), torch.tensor([10, 11])
    metric = RetrievalRecall()
    metric.update(features, ids, features, torch.tensor([0, 1]), torch.tensor([10, 12]))
    with pytest.raises(ValueError, match="never updated"):
        metric.compute()
    metric = RetrievalRecall()
    metric.update(features, ids, features, torch.tensor([0, 0]), torch.tensor([10, 11]))
    with pytest.raises(ValueError, match="different image ids"):
        metric.compute()


def test_summarize_domains_average():
    per_domain = {
        "coco": {"i2t_R@1": 50.0, "t2i_R@1": 40.0, "rsum": 90.0},
        "flickr": {"i2t_R@1": 70.0, "t2i_R@1": 60.0, "rsum": 130.0},
    }
    summary = summarize_domains(per_domain)
    assert list(summary) == ["coco", "flickr", "AVG"]
    avg = summary["AVG"]
    assert avg == pytest.approx({"i2t_R@1": 60.0, "t2i_R@1": 50.0, "rsum": 110.0})
    assert avg["rsum"] == pytest.approx(avg["i2t_R@1"] + avg["t2i_R@1"])
    assert summary["coco"] == per_domain["coco"] and summary["coco"] is not per_domain["coco"]
    with pytest.raises(ValueError):
        summarize_domains({"a": {"rsum": 1.0}, "b": {"x": 1.0}})


TRAINING_STACK = {"lightning", "pytorch_lightning", "hydra", "wandb", "torchmetrics"}
IMPORT_CHECK = f"""
import importlib.util, sys
stack = lambda: {{m.split('.')[0] for m in sys.modules}} & {TRAINING_STACK!r}
path = {str(REPO_ROOT / "dualprompt" / "metrics.py")!r}
spec = importlib.util.spec_from_file_location('metrics_alone', path)
spec.loader.exec_module(importlib.util.module_from_spec(spec))
assert not stack(), f'metrics.py itself imports {{stack()}}'
import open_clip  # timm, under open_clip, imports wandb whenever it is installed
baseline = stack()
import dualprompt.metrics
assert stack() <= baseline, f'the dualprompt package imports {{stack() - baseline}}'
"""


def test_core_metrics_module_imports_no_training_stack():
    pythonpath = [str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, pythonpath))}
    result = subprocess.run(
        [sys.executable, "-c", IMPORT_CHECK], cwd=REPO_ROOT, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-2000:]
