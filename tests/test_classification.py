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
from tests.conftest import TINY_NAME, write_prompt_file, write_tiny_model
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


def test_attribute_extraction_equals_a_hand_computation(catalogue, tmp_path,  # noqa: F811
                                                        tiny_config_file):
    from dualprompt.data.custom import load_table
    from dualprompt.training.attributes import extract_attributes, load_attributes
    config, weights = write_tiny_model(tmp_path)
    clip = load_clip(TINY_NAME, str(weights), config_file=str(config))
    records = load_table(catalogue["test_csv"], "csv", class_key="label")
    samples = [Sample(r, catalogue["test_csv"].parent / r.file_name) for r in records]
    table = {r.image_id: {"colour": CLASSES[r.class_name][0], "pattern": CLASSES[r.class_name][1],
                          "split": "test"} for r in records}
    (tmp_path / "attributes.json").write_text(json.dumps(table))
    truth = load_attributes(tmp_path / "attributes.json", samples)
    assert truth[0] == {"colour": "red", "pattern": "stripes"}  # bookkeeping keys dropped
    out = extract_attributes(clip.model, samples, truth, clip.preprocess_val, clip.tokenizer,
                             {"colour": "a {} square"}, batch_size=3)
    with torch.no_grad():
        images = F.normalize(clip.model.encode_image(torch.stack(
            [load_image(s.path, clip.preprocess_val) for s in samples])), dim=-1)
        for name, template in (("colour", "a {} square"), ("pattern", "a photo of something {}.")):
            values = sorted({row[name] for row in truth})
            text = F.normalize(clip.model.encode_text(clip.tokenizer(
                [template.format(v) for v in values])), dim=-1)
            predicted = (images @ text.t()).argmax(1)
            target = torch.tensor([values.index(row[name]) for row in truth])
            f1 = []
            for v in range(len(values)):
                tp = ((predicted == v) & (target == v)).sum().item()
                fp = ((predicted == v) & (target != v)).sum().item()
                fn = ((predicted != v) & (target == v)).sum().item()
                f1.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
            got = out["attributes"][name]
            assert got["accuracy"] == pytest.approx(
                100 * (predicted == target).float().mean().item(), abs=1e-4)
            assert got["macro_f1"] == pytest.approx(100 * sum(f1) / len(f1), abs=1e-4)
    # through evaluate task=attributes, the file named by the domain config
    from dualprompt.training.schema import DomainConfig
    cfg = EvaluateConfig(
        dataset=DatasetConfig(name="attrs", root=str(catalogue["test_csv"].parent),
                              captions=str(catalogue["test_csv"].parent), class_key="label",
                              domains={"custom": DomainConfig(
                                  test="test.csv", format="csv",
                                  attributes=str(tmp_path / "attributes.json"))},
                              test_domains=["custom"],
                              attribute_templates={"colour": "a {} square"}),
        model=ModelConfig(name=TINY_NAME, pretrained=str(weights), config_file=str(config)),
        task="attributes", data=DataLoaderConfig(eval_batch_size=3, num_workers=0))
    evaluated = evaluate(cfg, tmp_path / "eval")["results"]["custom"]
    assert evaluated["attributes"]["colour"] == out["attributes"]["colour"]
    (tmp_path / "attributes.json").write_text(json.dumps({}))
    with pytest.raises(ValueError, match=r"attributes.json: no attributes for record 'test.csv:2'"):
        load_attributes(tmp_path / "attributes.json", samples)
