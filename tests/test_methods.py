"""Every method of the `method=` group through `python -m dualprompt.train` on toy data, and the
baselines' own artifacts (CLIP-Adapter prompt file, fine-tuned open_clip folder) loading back."""
from __future__ import annotations

import json

import open_clip
import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from dualprompt import DualPromptCLIP, PromptConfig, towers

from tests.test_train_cli import run_cli, toy  # noqa: F401  (module fixture)

pytestmark = pytest.mark.slow  # every method through the CLI: ~3 min on 2 cores

# the tiny model has 3 layers per tower: the presets' depth fractions (VPT-deep 1.0, MaPLe and
# PromptSRC 0.75) give 3 there, as their 12 and 9 on ViT-B
ADAPTERS = {f"model.{side}_adapter.mlp.{i}.weight" for side in ("image", "text") for i in (0, 2)}
LORA = {f"model.{side}_lora.{m}" for side in ("image", "text") for m in "ab"}
TOKEN_LORA = {"model.token_lora.a", "model.token_lora.b"}  # the default's, on the embedding
METHODS = {
    "dualprompt": ([], {"model.attribute.vectors", "model.subcategory.vectors",
                        "model.subcategory.keys", "model.visual_prompts.vectors", *ADAPTERS,
                        *LORA, *TOKEN_LORA}),
    "coop": ([], {"model.attribute.vectors"}),
    "coop_csc": ([], {"model.attribute.vectors"}),
    "vpt": ([], {"model.visual_prompts.vectors"}),
    "vpt_deep": ([], {"model.visual_prompts.vectors"}),
    "maple": ([],
              {"model.attribute.vectors", *(f"model.visual_prompts.coupling.{i}.{p}"
                                            for i in range(3) for p in ("weight", "bias"))}),
    "clip_adapter": ([], ADAPTERS),
    "clip_lora": ([], LORA),
    "kgcoop": ([], {"model.attribute.vectors"}),
    "promptsrc": ([], {"model.attribute.vectors", "model.visual_prompts.vectors"}),
}


@pytest.fixture(scope="module")
def method_runs(toy):  # noqa: F811
    """Every method trained for one epoch in one Hydra multirun (one process, so the ~10 s
    start-up of Python, torch and Lightning is paid once): {method: its run folder}."""
    sweep = toy["tmp"] / "methods"
    run_cli("dualprompt.train", toy, toy["tmp"] / "unused", "hydra.mode=MULTIRUN",
            f"method={','.join(sorted(METHODS))}", "trainer.max_epochs=1",
            "trainer.log_every_n_steps=1", f"hydra.sweep.dir={sweep}",
            "hydra.sweep.subdir=${method.name}")
    return {m: sweep / m for m in METHODS}


@pytest.mark.parametrize("method", sorted(METHODS))
def test_prompt_methods_train_and_write_results(toy, method_runs, method):  # noqa: F811
    _, learned = METHODS[method]
    run_dir = method_runs[method]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["method"] == method
    assert set(results["test"]) == {"toy_a", "toy_b", "AVG"} and results["zero_shot"]
    assert results["artifact_bytes"] == (run_dir / "prompts.safetensors").stat().st_size > 0
    assert results["trainable_parameters"] > 0 and results["train_seconds"] > 0
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert set(ckpt["state_dict"]) == learned
    log = (run_dir / "train.log").read_text() if (run_dir / "train.log").exists() else ""
    if method == "kgcoop":
        assert "train/loss_text_consistency" in _logged(run_dir)
    if method == "promptsrc":  # the three consistency terms, and the aggregate is exported
        assert {"train/loss_text_consistency", "train/loss_image_consistency",
                "train/loss_logit_consistency"} <= _logged(run_dir)
        assert "Gaussian prompt aggregation" in log
    if method == "coop_csc":  # one set of 16 vectors per training class of the toy data
        classes = {r["class_name"] for split in ("toy_a", "toy_b")
                   for r in json.loads((toy["tmp"] / "data" / split / "train.json")
                                       .read_text()).values()}
        assert ckpt["state_dict"]["model.attribute.vectors"].shape[:3] == (len(classes), 1, 16)


def test_zeroshot_trains_nothing_and_matches_the_zero_shot_column(toy, tiny_config_file):  # noqa: F811
    run_dir = toy["tmp"] / "method_zeroshot"
    run_cli("dualprompt.train", toy, run_dir, "method=zeroshot")
    results = json.loads((run_dir / "results.json").read_text())
    assert results["trainable_parameters"] == 0 and results["epochs_trained"] == 0
    assert results["test"] == results["zero_shot"]
    assert not (run_dir / "checkpoints").exists()


def test_clip_adapter_file_reproduces_its_metrics(toy, method_runs):  # noqa: F811
    run_dir = method_runs["clip_adapter"]
    results = json.loads((run_dir / "results.json").read_text())
    run_cli("dualprompt.evaluate", toy, toy["tmp"] / "eval_adapter",
            f"prompts={run_dir / 'prompts.safetensors'}")
    again = json.loads((toy["tmp"] / "eval_adapter" / "results.json").read_text())["results"]
    assert again == results["test"]


def test_full_finetune_exports_an_open_clip_folder_that_reproduces_its_features(
        toy, tiny_config_file):  # noqa: F811
    run_dir = toy["tmp"] / "method_full_finetune"
    run_cli("dualprompt.train", toy, run_dir, "method=full_finetune", "trainer.max_epochs=2",
            "optim.lr=1e-3")
    results = json.loads((run_dir / "results.json").read_text())
    folder = run_dir / "finetuned"
    base = open_clip.create_model("dualprompt-test-tiny")
    n_weights = sum(p.numel() for p in base.parameters())
    assert results["trainable_parameters"] == n_weights
    assert results["artifact_bytes"] > 4 * n_weights  # fp32 weights + config
    # the checkpoints hold every CLIP weight (they are not prompt files) and resume
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert len(ckpt["state_dict"]) == len(list(base.parameters()))
    # open_clip's own loader reads the folder; the weights moved away from the base model
    tuned, _, _ = open_clip.create_model_and_transforms(f"local-dir:{folder}")
    weights = load_file(str(toy["weights"]))
    moved = [k for k, v in tuned.state_dict().items() if k in weights
             and not torch.equal(v, weights[k])]
    assert moved
    # the folder evaluates as a base model; the run tested it (restored from the folder)
    # through dualprompt's towers, `evaluate` through open_clip's forward: the two give the
    # same features to float rounding, not bitwise (the towers run the pooled row alone in the
    # last block, another matrix shape), and on this near-random toy that is enough to swap
    # near-tied gallery items, so the features are compared, not 12 queries' recalls
    run_cli("dualprompt.evaluate", toy, toy["tmp"] / "eval_ft", "model.config_file=null",
            pretrained=f"local-dir:{folder}")
    again = json.loads((toy["tmp"] / "eval_ft" / "results.json").read_text())["results"]
    assert again.keys() == results["test"].keys()
    assert results["zero_shot"] != results["test"]
    run_config = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    prompt = PromptConfig.from_dict(OmegaConf.to_container(run_config.prompt, resolve=True))
    tested = DualPromptCLIP(tuned, prompt, train_backbone=True).eval()
    tokens = open_clip.get_tokenizer("dualprompt-test-tiny")(
        ["a toy", "a small red toy with blue stripes on its long curled tail", "toy b"])
    images = torch.randn(2, 3, *towers.image_size(tuned))
    with torch.no_grad():
        torch.testing.assert_close(tested.encode_text(tokens), tuned.encode_text(tokens))
        torch.testing.assert_close(tested.encode_image(images), tuned.encode_image(images))
    # resume continues from the checkpoint with every weight
    proc = run_cli("dualprompt.train", toy, run_dir, "method=full_finetune",
                   "trainer.max_epochs=3", "optim.lr=1e-3", "ckpt_path=last")
    assert "Restored all states" in proc.stdout + proc.stderr


def _logged(run_dir) -> set[str]:
    """The metric names the CSV logger wrote."""
    header = next(run_dir.rglob("metrics.csv")).read_text().splitlines()[0]
    return set(header.split(","))
