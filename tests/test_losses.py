"""Losses against straightforward re-statements of their formulas."""
import math

import torch
import torch.nn.functional as F

from dualprompt import (category_loss, category_weights, contrastive_loss, gathered_sigmoid_loss,
                        sigmoid_category_loss, sigmoid_loss)


def _unit(*shape):
    return F.normalize(torch.randn(*shape, dtype=torch.float64), dim=-1)


def test_contrastive_one_caption_per_image_is_clip_loss():
    img, txt = _unit(5, 8), _unit(5, 8)
    logits = 10 * img @ txt.t()
    labels = torch.arange(5)
    expected = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2
    torch.testing.assert_close(contrastive_loss(img, txt, 10.0).double(), expected, rtol=1e-5, atol=1e-6)


def test_contrastive_several_captions_per_image():
    img, txt = _unit(3, 8), _unit(6, 8)
    owner = torch.tensor([0, 0, 1, 2, 2, 2])
    logits = 7 * img @ txt.t()
    t2i = sum(-torch.log_softmax(logits[:, j], 0)[owner[j]] for j in range(6)) / 6
    p = torch.softmax(logits, dim=1)
    i2t = sum(-math.log(p[i, owner == i].sum()) for i in range(3)) / 3
    got = contrastive_loss(img, txt, 7.0, owner)
    torch.testing.assert_close(got.double(), (t2i + i2t) / 2, rtol=1e-5, atol=1e-6)


def test_images_without_captions_are_left_out_of_image_to_text():
    img, txt = _unit(3, 8), _unit(2, 8)
    owner = torch.tensor([0, 2])
    got = contrastive_loss(img, txt, 5.0, owner)
    assert torch.isfinite(got)


def test_category_loss_formula_with_weights_and_mask():
    img, pos, neg = _unit(2, 8), _unit(2, 8), _unit(2, 3, 8)
    w = torch.tensor([[1.5, 1.0, 1.0], [1.0, 1.5, 2.0]])
    mask = torch.tensor([[True, True, False], [True, True, True]])
    scale = 4.0
    total = 0.0
    for b in range(2):
        s0 = scale * float(img[b] @ pos[b])
        denom = math.exp(s0) + sum(w[b, k] * math.exp(scale * float(img[b] @ neg[b, k]))
                                   for k in range(3) if mask[b, k])
        total += -math.log(math.exp(s0) / denom)
    got = category_loss(img, pos, neg, scale, w, mask)
    assert abs(got.item() - total / 2) < 1e-5


def test_category_weights_up_weight_same_category():
    w = category_weights(torch.tensor([[3, 1], [2, 2]]), torch.tensor([3, 0]), alpha=0.5)
    assert w.tolist() == [[1.5, 1.0], [1.0, 1.0]]


def test_gradients_flow_through_half_precision_features():
    img = _unit(4, 8).half().requires_grad_()
    txt = _unit(4, 8).half()
    loss = contrastive_loss(img, txt, 10.0)
    assert loss.dtype == torch.float32
    loss.backward()
    assert img.grad is not None and torch.isfinite(img.grad).all()


def test_sigmoid_loss_is_open_clips_siglip_loss():
    from open_clip.loss import SigLipLoss
    img, txt = _unit(6, 8).float(), _unit(6, 8).float()
    scale, bias = torch.tensor(10.0), torch.tensor(-5.0)
    expected = SigLipLoss(rank=0, world_size=1)(img, txt, scale, bias)
    torch.testing.assert_close(sigmoid_loss(img, txt, scale, bias), expected)


def test_sigmoid_loss_several_captions_per_image():
    img, txt = _unit(3, 8), _unit(5, 8)
    owner = torch.tensor([0, 0, 1, 2, 2])
    total = 0.0
    for i in range(3):
        for j in range(5):
            z = 4.0 * float(img[i] @ txt[j]) - 2.0
            total += -math.log(1 / (1 + math.exp(-z if owner[j] == i else z)))
    got = sigmoid_loss(img, txt, 4.0, -2.0, owner)
    assert abs(got.item() - total / 3) < 1e-5


def test_gathered_sigmoid_loss_averages_to_the_global_batch_loss():
    """Two ranks of 3: the mean of the ranks' losses is the loss over the batch of 6."""
    img, txt = _unit(6, 8), _unit(6, 8)
    ranks = [gathered_sigmoid_loss(img[r * 3:(r + 1) * 3], txt, 10.0, -5.0, offset=r * 3)
             for r in range(2)]
    torch.testing.assert_close(sum(ranks) / 2, sigmoid_loss(img, txt, 10.0, -5.0))


def test_sigmoid_category_loss_formula_with_weights_and_mask():
    img, pos, neg = _unit(2, 8), _unit(2, 8), _unit(2, 3, 8)
    w = torch.tensor([[1.5, 1.0, 1.0], [1.0, 1.5, 2.0]])
    mask = torch.tensor([[True, True, False], [True, True, True]])

    def log_sigmoid(z):
        return -math.log(1 + math.exp(-z))
    total = 0.0
    for b in range(2):
        total -= log_sigmoid(4.0 * float(img[b] @ pos[b]) - 1.0)
        total -= sum(w[b, k] * log_sigmoid(-(4.0 * float(img[b] @ neg[b, k]) - 1.0))
                     for k in range(3) if mask[b, k])
    got = sigmoid_category_loss(img, pos, neg, 4.0, -1.0, w, mask)
    assert abs(got.item() - float(total) / 2) < 1e-5
