"""`evaluate task=classification`: the metrics equal a hand computation on a toy catalogue, the
domain's own caption prefix becomes a template, and a prompt file is scored beside zero-shot."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from dualprompt.cli.evaluate import evaluate
from dualprompt.data.datasets import Sample, load_image
from dualprompt.data.records import ImageRecord
from dualprompt.loading import load_clip
from dualprompt.training.classification import CLIP_TEMPLATE, templates_for
from dualprompt.training.schema import (DataLoaderConfig, DatasetConfig, EvaluateConfig,
                                        ModelConfig, TrainerConfig)
from tests.conftest import TINY_CFG, TINY_NAME, write_prompt_file, write_tiny_model
from tests.test_custom_data import catalogue  # noqa: F401  (module fixture)
from tests.toy_data import CLASSES


def test_classification_equals_a_hand_computation(catalogue, tmp_path, tiny_config_file):  # noqa: F811
    config, weights = write_tiny_model(tmp_path)
    cfg = EvaluateConfig(
        dataset=DatasetConfig(name="custom", root=".", test_data=str(catalogue["test_csv"]),
                              class_key="label"),
        model=ModelConfig(name=TINY_NAME, pretrained=str(weights), config_file=str(config)),
        prompts=str(write_prompt_file(tmp_path / "p.safetensors")), task="classification",
        trainer=TrainerConfig(accelerator="cpu", devices=1, enable_progress_bar=False),
        data=DataLoaderConfig(eval_batch_size=3, num_workers=0))
    out = evaluate(cfg, tmp_path / "eval")
    zero = out["zero_shot"]["custom"]
    assert zero["templates"] == [CLIP_TEMPLATE, "a {}."]  # captions read "a <class> item, ..."
    assert set(out["results"]["custom"]) >= {"acc1", "acc5", "mean_per_class_recall"}

    # by hand: CLIP's ensembling, argmax over the 4 classes, recall per class
    clip = load_clip(TINY_NAME, str(weights), config_file=str(config))
    classes = sorted(CLASSES)
    with torch.no_grad():
        text = torch.stack([F.normalize(F.normalize(clip.model.encode_text(clip.tokenizer(
            [t.format(c) for t in zero["templates"]])), dim=-1).mean(0), dim=-1)
            for c in classes])
        rows = [line.split("\t") for line in catalogue["test_csv"].read_text().splitlines()[1:]]
        images = torch.stack([load_image(catalogue["test_csv"].parent / p, clip.preprocess_val)
                              for p, _, _ in rows])
        predicted = (F.normalize(clip.model.encode_image(images), dim=-1) @ text.t()).argmax(1)
    truth = torch.tensor([classes.index(c) for _, _, c in rows])
    assert zero["acc1"] == pytest.approx(100 * (predicted == truth).float().mean().item(), abs=1e-4)
    recalls = [(predicted[truth == c] == c).float().mean().item() for c in range(4)]
    assert zero["mean_per_class_recall"] == pytest.approx(100 * sum(recalls) / 4, abs=1e-4)
    assert zero["acc5"] == 100.0  # 4 classes: top 5 holds them all
    dump = json.loads((tmp_path / "eval" / "clip_benchmark" / "custom.json").read_text())
    assert dump["task"] == "zeroshot_classification"
    assert dump["metrics"]["acc1"] == out["results"]["custom"]["acc1"] / 100


def test_templates_take_the_domains_own_prefix():
    samples = [Sample(ImageRecord(str(i), f"{i}.jpg", c, (f"This is a photo of {c}. It is big.",)),
                      Path(f"{i}.jpg")) for i, c in enumerate(["Koso", "Truzo"])]
    assert templates_for(samples) == [CLIP_TEMPLATE, "This is a photo of {}."]
