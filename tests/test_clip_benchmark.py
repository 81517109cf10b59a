"""A `DualPromptCLIP` drops into CLIP_benchmark's retrieval evaluator and gets the Recall@K
that `dualprompt.metrics` and `dualprompt.evaluate` report.

Ties: CLIP_benchmark ranks with `torch.topk`, whose order among equal scores is unspecified;
dualprompt breaks ties by gallery index. The toy captions are all distinct (and the images
carry random noise), so no two scores tie and both rules give the same ranks.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from torch.utils.data import DataLoader, Dataset

from dualprompt import load_prompts
from dualprompt.cli.evaluate import evaluate
from dualprompt.loading import load_clip
from dualprompt.metrics import retrieval_metrics
from dualprompt.training.schema import (DataLoaderConfig, DatasetConfig, DomainConfig,
                                        EvaluateConfig, ModelConfig, NegativesConfig,
                                        TrainerConfig)
from tests.conftest import TINY_CFG, TINY_NAME, make_tiny_clip, write_prompt_file
from tests.toy_data import write_toy_karpathy

zeroshot_retrieval = pytest.importorskip("clip_benchmark.metrics.zeroshot_retrieval")

KS = (1, 5)  # the text->image gallery has 8 images: CLIP_benchmark's topk needs K <= 8


class ImageCaptions(Dataset):
    """(image (3, H, W), [its captions]) as CLIP_benchmark's retrieval datasets yield them."""

    def __init__(self, root: Path, transform) -> None:
        self.root, self.transform = root, transform
        self.images = json.loads((root / "captions.json").read_text())["images"]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        item = self.images[i]
        image = Image.open(self.root / item["filepath"] / item["filename"]).convert("RGB")
        return self.transform(image), [s["raw"] for s in item["sentences"]]


def collate(batch):  # CLIP_benchmark's image_captions_collate_fn
    return torch.stack([image for image, _ in batch]), [captions for _, captions in batch]


@pytest.fixture(scope="module")
def toy(tmp_path_factory, tiny_config_file):
    tmp = tmp_path_factory.mktemp("clip_benchmark")
    model_config = tmp / f"{TINY_NAME}.json"
    model_config.write_text(json.dumps(TINY_CFG))
    weights = tmp / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in make_tiny_clip(seed=3).state_dict().items()},
              str(weights))
    return {"tmp": tmp, "data": write_toy_karpathy(tmp / "karpathy"), "weights": weights,
            "model_config": model_config, "prompts": write_prompt_file(tmp / "prompts.safetensors")}


def test_clip_benchmark_recall_equals_dualprompt_metrics_and_evaluate(toy):
    clip = load_clip(TINY_NAME, str(toy["weights"]), config_file=str(toy["model_config"]))
    model = load_prompts(toy["prompts"], clip.model)
    dataset = ImageCaptions(toy["data"], clip.preprocess_val)
    loader = DataLoader(dataset, batch_size=3, collate_fn=collate)  # uneven last batch
    theirs = zeroshot_retrieval.evaluate(model, loader, clip.tokenizer, "cpu", amp=False,
                                         recall_k_list=list(KS))

    with torch.no_grad():
        images = torch.stack([dataset[i][0] for i in range(len(dataset))])
        captions = [c for i in range(len(dataset)) for c in dataset[i][1]]
        text_to_image = torch.tensor([i for i in range(len(dataset)) for _ in dataset[i][1]])
        ours = retrieval_metrics(model.encode_image(images, normalize=True),
                                 model.encode_text(clip.tokenizer(captions), normalize=True),
                                 text_to_image, ks=KS)

    cfg = EvaluateConfig(
        dataset=DatasetConfig(name="toy_karpathy", root=str(toy["data"]),
                              domains={"toy": DomainConfig(test="captions.json",
                                                           format="karpathy")},
                              test_domains=["toy"], negatives=NegativesConfig(k=0)),
        model=ModelConfig(name=TINY_NAME, pretrained=str(toy["weights"]),
                          config_file=str(toy["model_config"])),
        prompts=str(toy["prompts"]),
        trainer=TrainerConfig(accelerator="cpu", devices=1, enable_progress_bar=False),
        data=DataLoaderConfig(eval_batch_size=3, num_workers=0))
    evaluated = evaluate(cfg, toy["tmp"] / "eval")["results"]["toy"]

    for k in KS:  # CLIP_benchmark: "image retrieval" is text->image; fractions, not percent
        assert 100 * theirs[f"image_retrieval_recall@{k}"] == pytest.approx(ours[f"t2i_R@{k}"])
        assert 100 * theirs[f"text_retrieval_recall@{k}"] == pytest.approx(ours[f"i2t_R@{k}"])
        for key in (f"t2i_R@{k}", f"i2t_R@{k}"):
            assert evaluated[key] == pytest.approx(ours[key], abs=1e-4)
    # 3 captions per image: image->text counts a hit for ANY caption in the top K (so it is
    # not true recall, which would top out at K/3 for K < 3)
    assert any(0 < ours[key] < 100 for key in ours if "_R@" in key)

    # the result file evaluate wrote is CLIP_benchmark's: its own `build` step tables it
    written = toy["tmp"] / "eval" / "clip_benchmark" / "toy.json"
    dump = json.loads(written.read_text())
    assert dump["task"] == "zeroshot_retrieval" and dump["model"] == TINY_NAME
    for key, value in theirs.items():
        assert dump["metrics"][key] == pytest.approx(value, abs=1e-6)
    assert dump["metrics"]["t2i_median_rank"] >= 1
    from argparse import Namespace

    from clip_benchmark.cli import main_build
    main_build(Namespace(files=[str(written)], output=str(toy["tmp"] / "benchmark.csv")))
    import csv
    with open(toy["tmp"] / "benchmark.csv") as f:
        (row,) = list(csv.DictReader(f))
    assert row["dataset"] == "toy" and float(row["image_retrieval_recall@1"]) == pytest.approx(
        theirs["image_retrieval_recall@1"], abs=1e-6)
    assert row["model_fullname"].endswith("prompts.safetensors")
