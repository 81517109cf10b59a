"""Two CPU processes (gloo) against one: the gathered loss, its gradients, and Recall@K."""
from __future__ import annotations

import open_clip
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from dualprompt import DualPromptCLIP, PromptConfig, contrastive_loss, gathered_contrastive_loss
from dualprompt.metrics import retrieval_metrics
from dualprompt.training.retrieval_metric import RetrievalRecall
from tests.conftest import TINY_NAME

CONFIG = PromptConfig(attribute_length=2, subcategory_length=2, visual_length=2, text_depth=2)
GLOBAL_BATCH = 8


def _model(model_config: str) -> DualPromptCLIP:
    open_clip.add_model_config(model_config)
    torch.manual_seed(0)
    clip = open_clip.create_model(TINY_NAME, pretrained=None)
    torch.manual_seed(1)
    return DualPromptCLIP(clip, CONFIG)


def _inputs():
    g = torch.Generator().manual_seed(2)
    images = torch.randn(GLOBAL_BATCH, 3, 32, 32, generator=g)
    tokens = open_clip.get_tokenizer("ViT-B-32")(
        [f"a photo of object {i} with {'stripes' if i % 2 else 'dots'}" for i in range(GLOBAL_BATCH)])
    return images, tokens


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def _worker(rank: int, world: int, init_file: str, model_config: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world)
    model = _model(model_config)
    images, tokens = _inputs()
    b = GLOBAL_BATCH // world
    local = slice(rank * b, (rank + 1) * b)
    img = model.encode_image(images[local], normalize=True)
    txt = model.encode_text(tokens[local], normalize=True)
    all_img = torch.cat(torch.distributed.nn.functional.all_gather(img))
    all_txt = torch.cat(torch.distributed.nn.functional.all_gather(txt))
    loss = gathered_contrastive_loss(img, txt, all_img, all_txt, model.logit_scale.exp(), rank * b)
    loss.backward()
    grads = _grads(model)
    for g in grads.values():  # what DDP does to gradients
        dist.all_reduce(g)
        g /= world
    mean_loss = loss.detach().clone()
    dist.all_reduce(mean_loss)
    mean_loss /= world

    # evaluation: interleaved shards as DistributedSampler makes them, padded with a duplicate
    metric = RetrievalRecall()
    with torch.no_grad():
        feats_i = F.normalize(model.encode_image(images), dim=-1)
        feats_t = F.normalize(model.encode_text(tokens), dim=-1)
    ids = list(range(rank, GLOBAL_BATCH + 1, world))  # 9 slots over 2 ranks: one padded id
    ids = torch.tensor([i % GLOBAL_BATCH for i in ids])
    metric.update(feats_i[ids], ids, feats_t[ids], ids, ids)
    recall = metric.compute()
    if rank == 0:
        torch.save({"loss": mean_loss, "grads": grads, "recall": recall}, out)
    dist.destroy_process_group()


@pytest.mark.slow  # two processes over gloo
def test_two_processes_equal_one(tmp_path, tiny_config_file):
    out = tmp_path / "rank0.pt"
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tiny_config_file), str(out)),
             nprocs=2, join=True)
    ddp = torch.load(out, weights_only=True)

    model = _model(str(tiny_config_file))
    images, tokens = _inputs()
    img = model.encode_image(images, normalize=True)
    txt = model.encode_text(tokens, normalize=True)
    loss = contrastive_loss(img, txt, model.logit_scale.exp())
    loss.backward()
    torch.testing.assert_close(ddp["loss"], loss.detach(), rtol=1e-5, atol=1e-6)
    for name, grad in _grads(model).items():
        torch.testing.assert_close(ddp["grads"][name], grad, rtol=1e-4, atol=1e-6)

    with torch.no_grad():
        single = retrieval_metrics(F.normalize(model.encode_image(images), dim=-1),
                                   F.normalize(model.encode_text(tokens), dim=-1),
                                   torch.arange(GLOBAL_BATCH))
    assert ddp["recall"] == single
