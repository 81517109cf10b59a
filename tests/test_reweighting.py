import torch

from dualprompt import token_weights


def test_weights_mean_one_on_content_and_one_elsewhere(tiny_clip, batch):
    images, tokens = batch
    w = token_weights(tiny_clip, tokens, images)
    assert w.shape == tokens.shape
    eot = tokens.argmax(-1)
    for b in range(len(tokens)):
        content = w[b, 1: eot[b]]
        torch.testing.assert_close(content.mean(), torch.tensor(1.0), atol=1e-4, rtol=0)
        assert content.std() > 0  # tokens really differ
        assert w[b, 0] == 1 and (w[b, eot[b]:] == 1).all()
        assert (w[b] >= 0).all()


def test_weights_depend_on_the_image_and_strength(tiny_clip, batch):
    images, tokens = batch
    w1 = token_weights(tiny_clip, tokens, images)
    w2 = token_weights(tiny_clip, tokens, images.flip(0))
    assert not torch.allclose(w1, w2)
    assert torch.equal(token_weights(tiny_clip, tokens, images, strength=0.0),
                       torch.ones(tokens.shape))
    half = token_weights(tiny_clip, tokens, images, strength=0.5)
    torch.testing.assert_close(half, 1 + 0.5 * (w1 - 1))


def test_precomputed_image_features_give_the_same_weights(tiny_clip, batch):
    images, tokens = batch
    feats = tiny_clip.encode_image(images)
    torch.testing.assert_close(token_weights(tiny_clip, tokens, image_features=feats),
                               token_weights(tiny_clip, tokens, images))
