"""The training app through its real entry point: `python -m dualprompt.train`."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from dualprompt import load_prompts
from tests.conftest import make_tiny_clip, write_tiny_model
from tests.toy_data import write_hydra_configs, write_toy_fdrd


@pytest.fixture(scope="module")
def toy(tmp_path_factory, tiny_config_file):
    """Toy FDRD data, a tiny model config and its weights file, a user config dir."""
    tmp = tmp_path_factory.mktemp("toy")
    data = write_toy_fdrd(tmp / "data")
    model_config, weights = write_tiny_model(tmp)
    conf = write_hydra_configs(tmp / "conf", data, model_config)
    return {"tmp": tmp, "conf": conf, "weights": weights, "model_config": model_config}


def run_cli(module: str, toy: dict, run_dir: Path, *overrides: str, env: dict | None = None,
            pretrained: str | None = None):
    cmd = [sys.executable, "-m", module, f"hydra.searchpath=[file://{toy['conf']}]",
           "dataset=toy", "model=tiny", f"model.pretrained={pretrained or toy['weights']}",
           "trainer=cpu",
           "trainer.enable_progress_bar=false", "data.batch_size=4", "data.num_workers=0",
           f"hydra.run.dir={run_dir}", *overrides]
    proc = subprocess.run(cmd, cwd=toy["tmp"], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_train_writes_results_checkpoint_and_prompt_file_then_resumes(toy, tiny_config_file):
    run_dir = toy["tmp"] / "run"
    run_cli("dualprompt.train", toy, run_dir, "trainer.max_epochs=2")
    results = json.loads((run_dir / "results.json").read_text())
    assert set(results["test"]) == {"toy_a", "toy_b", "AVG"}
    assert set(results["zero_shot"]) == {"toy_a", "toy_b", "AVG"}
    for res in (results["test"], results["zero_shot"]):
        assert 0 <= res["AVG"]["i2t_R@1"] <= 100 and res["AVG"]["rsum"] <= 600
    assert results["config"]["prompt"]["attribute_length"] == 4
    assert results["versions"]["torch"] and results["versions"]["open_clip_torch"]
    assert results["epochs_trained"] == 2
    # the loader's data report: the toy file ships one negative equal to the positive per record
    report = results["data"]["reports"]["toy_a/train"]
    assert report["negatives_identical"]["count"] == report["n_records"] == 24
    assert results["data"]["images"]["toy_a"] == {"train": 18, "val": 6, "test": 12}
    # the pictures, and one curve point per epoch with the logged validation numbers
    assert [c["epoch"] for c in results["curves"]] == [0, 1]
    assert all(c["train_loss"] > 0 and 0 <= c["val_i2t_R@1"] <= 100 for c in results["curves"])
    for picture in ("curves.png", "retrieval_examples.png"):
        with Image.open(run_dir / picture) as img:
            assert img.width > 800 and img.height > 300
    assert json.loads((run_dir / "clip_benchmark" / "zero_shot" / "toy_a.json").read_text())[
        "metrics"]["image_retrieval_recall@1"] == results["zero_shot"]["toy_a"]["t2i_R@1"] / 100

    # the checkpoint holds the learned tensors (+ optimizer/scheduler state), not the CLIP
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["epoch"] == 1
    adapters = {f"model.{tower}_adapter.mlp.{i}.weight" for tower in ("image", "text")
                for i in (0, 2)}  # the default method's feature adapters and LoRAs
    lora = {f"model.{part}_lora.{m}" for part in ("image", "text", "token") for m in "ab"}
    assert set(ckpt["state_dict"]) == {"model.attribute.vectors", "model.subcategory.vectors",
                                       "model.subcategory.keys", "model.visual_prompts.vectors",
                                       *adapters, *lora}
    assert ckpt["optimizer_states"] and ckpt["lr_schedulers"]

    # the exported prompt file loads onto the same base weights and gives the test numbers back
    clip = make_tiny_clip(seed=3)
    model = load_prompts(run_dir / "prompts.safetensors", clip)
    assert model.num_trainable_parameters() == results["trainable_parameters"]
    evaluated = run_cli("dualprompt.evaluate", toy, toy["tmp"] / "eval",
                        f"prompts={run_dir / 'prompts.safetensors'}")
    assert "prompted" in evaluated.stderr + evaluated.stdout
    again = json.loads((toy["tmp"] / "eval" / "results.json").read_text())["results"]
    assert again == results["test"]
    assert (toy["tmp"] / "eval" / "retrieval_examples.png").is_file()

    # resume from last: the epoch count continues (epoch 2 only), it does not start over
    proc = run_cli("dualprompt.train", toy, run_dir, "trainer.max_epochs=3", "ckpt_path=last")
    log = proc.stdout + proc.stderr
    assert "Restored all states" in log
    assert "epoch 2: val" in log and "epoch 0: val" not in log and "epoch 1: val" not in log
    assert json.loads((run_dir / "results.json").read_text())["epochs_trained"] == 3


def test_resume_without_a_checkpoint_is_a_clear_error(toy, tiny_config_file):
    cmd = [sys.executable, "-m", "dualprompt.train", f"hydra.searchpath=[file://{toy['conf']}]",
           "dataset=toy", "model=tiny", f"hydra.run.dir={toy['tmp'] / 'empty'}", "ckpt_path=last"]
    proc = subprocess.run(cmd, cwd=toy["tmp"], capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "ckpt_path=last but there is no" in proc.stderr


@pytest.mark.slow  # a training run with wandb
def test_wandb_offline_run_folder(toy, tiny_config_file):
    run_dir = toy["tmp"] / "wandb_run"
    env = {"WANDB_MODE": "offline", "WANDB_DIR": str(toy["tmp"]),
           "WANDB_CACHE_DIR": str(toy["tmp"] / "wandb_cache"),
           "WANDB_CONFIG_DIR": str(toy["tmp"] / "wandb_config"), "WANDB_SILENT": "true"}
    run_cli("dualprompt.train", toy, run_dir, "logger=wandb", "logger.offline=true",
            "trainer.max_epochs=1", "eval_zero_shot=false", env=env)
    runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, list(run_dir.rglob("*"))[:20]
    assert list(runs[0].glob("*.wandb")), "the offline run holds its event log for `wandb sync`"
    assert (run_dir / "results.json").is_file()


@pytest.mark.parametrize("full_error", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_a_missing_file_is_one_clean_line_unless_hydra_full_error(toy, full_error):
    cmd = [sys.executable, "-m", "dualprompt.train", f"hydra.searchpath=[file://{toy['conf']}]",
           "dataset=toy", "model=tiny", f"model.pretrained={toy['weights']}", "trainer=cpu",
           "dataset.root=/nonexistent/root", f"hydra.run.dir={toy['tmp'] / 'missing'}"]
    env = {**os.environ, "HYDRA_FULL_ERROR": "1" if full_error else "0"}
    proc = subprocess.run(cmd, cwd=toy["tmp"], capture_output=True, text=True, env=env,
                          timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-3000:]
    assert ("FileNotFoundError: domain toy_a: train caption file 'toy_a/train.json' not found: "
            "tried /nonexistent/root/train/toy_a/train.json, /nonexistent/root/toy_a/train.json"
            ) in out
    assert ("Traceback (most recent call last)" in out) == full_error, out[-3000:]


@pytest.mark.slow  # a training run on a timm image tower at 160 px
def test_siglip_shaped_model_trains_with_the_sigmoid_loss(toy, other_layout_configs):
    """A SigLIP-shaped model (CustomTextCLIP, bidirectional text pooled last, logit bias, timm
    ViT with an attention-pool head) trains through the CLI: loss.kind=auto picks the sigmoid
    loss, the negatives and re-weighting run, and the prompt file loads onto its weights."""
    from safetensors.torch import save_file
    import open_clip

    from tests.conftest import SIGLIP_TINY

    torch.manual_seed(11)
    clip = open_clip.create_model(SIGLIP_TINY, pretrained=None).eval()
    weights = toy["tmp"] / "siglip.safetensors"
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, str(weights))
    run_dir = toy["tmp"] / "siglip_run"
    proc = run_cli("dualprompt.train", toy, run_dir, "trainer.max_epochs=1",
                   "trainer.log_every_n_steps=1", f"model.name={SIGLIP_TINY}",
                   f"model.config_file={other_layout_configs[SIGLIP_TINY]}",
                   pretrained=str(weights))
    log = proc.stdout + proc.stderr
    assert "trains with SigLIP's sigmoid loss" in log
    results = json.loads((run_dir / "results.json").read_text())
    assert results["config"]["loss"]["kind"] == "auto" and results["epochs_trained"] == 1
    assert 0 <= results["test"]["AVG"]["i2t_R@1"] <= 100
    metrics = (run_dir / "csv" / "metrics.csv").read_text()
    assert "train/loss_con" in metrics and "train/loss_cate" in metrics
    model = load_prompts(run_dir / "prompts.safetensors", clip)
    assert model.num_trainable_parameters() == results["trainable_parameters"]
    assert model.visual_prompts is not None and not model.trim_context
